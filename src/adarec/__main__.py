from adarec.cli import main

raise SystemExit(main())
