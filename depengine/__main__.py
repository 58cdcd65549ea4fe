"""``python -m depengine``: the ``depengine`` command."""

from ._cli import main

raise SystemExit(main())
