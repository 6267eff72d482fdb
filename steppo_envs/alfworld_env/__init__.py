"""``steppo/ALFWorld-v0``: ALFWorld household tasks through TextWorld (see :mod:`.env`).

Light to import: textworld and alfworld are imported only when an environment is built.
"""

from __future__ import annotations

__all__: list[str] = []
