"""The catalog's repository functions under one name, ``repo.X``, as most callers use them.

Each lives in the module of its table family and is re-exported here unchanged:
:mod:`vitdex.db.images` (libraries, images, labels, status counts),
:mod:`vitdex.db.spaces` (spaces and vector rows), :mod:`vitdex.db.rows` (``get_row``).
Job rows, a foreground ``vitdex index`` run's included, are :mod:`vitdex.db.jobs`'s.
Functions leave committing to the caller.
"""

from __future__ import annotations

from vitdex.db.images import *  # noqa: F403 - re-exported: see the docstring
from vitdex.db.rows import get_row as get_row
from vitdex.db.spaces import *  # noqa: F403
