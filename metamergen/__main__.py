"""``python -m metamergen``: the same as the ``metamergen`` console script."""

from .cli import main

raise SystemExit(main())
