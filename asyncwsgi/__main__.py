"""``python -m asyncwsgi serve APP``."""

from .cli import main

raise SystemExit(main())
