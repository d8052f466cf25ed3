"""``python -m draftattention_diffusers``: the same as the ``draftattention`` command (see :mod:`.cli`)."""

from .cli import main

raise SystemExit(main())
