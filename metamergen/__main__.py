"""``python -m metamergen``: the same as the ``metamergen`` console script."""

from metamergen.commands import main

raise SystemExit(main())
