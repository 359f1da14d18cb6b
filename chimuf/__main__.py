from chimuf.cli import main

raise SystemExit(main())
