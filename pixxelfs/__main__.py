"""`python -m pixxelfs` is the same as the `pixxelfs` command."""

from pixxelfs.cli import main

raise SystemExit(main())
