"""Entry point for ``python -m carvana_seg``."""

from carvana_seg.pipeline.cli import main

raise SystemExit(main())
