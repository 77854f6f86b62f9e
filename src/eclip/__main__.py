from eclip.cli import main

raise SystemExit(main())
