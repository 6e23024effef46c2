"""Entry point for ``python -m carvana_seg``."""

from carvana_seg.cli import main

raise SystemExit(main())
