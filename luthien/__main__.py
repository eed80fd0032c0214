from luthien.cli import main

raise SystemExit(main())
