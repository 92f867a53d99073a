from rerankd.bench.loadgen import main

raise SystemExit(main())
