from bench.loadgen import main

raise SystemExit(main())
