from rerankd.cli import main

raise SystemExit(main())
