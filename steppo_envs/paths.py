"""Where steppo reads data and writes caches.

* Data directory: the ``data_dir`` argument, else ``$STEPPO_DATA_DIR``, else ``../shared/data``
  relative to the working directory or to the source checkout, when one of them exists.
* Cache directory: ``$STEPPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/steppo``, else ``~/.cache/steppo``.
"""

from __future__ import annotations

import os
from pathlib import Path

from steppo_envs.config import UserError

__all__ = ["DataDirError", "cache_dir", "resolve_data_dir"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


class DataDirError(UserError, FileNotFoundError):
    """Raised when the data directory cannot be found; the message names the fix."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None, *, subdir: str | None = None) -> Path:
    """Return the data directory (optionally a sub-folder of it), raising a one-sentence error if missing."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        origin = f"data_dir={str(data_dir)!r}"
    elif os.environ.get("STEPPO_DATA_DIR"):
        root = Path(os.environ["STEPPO_DATA_DIR"]).expanduser()
        origin = f"STEPPO_DATA_DIR={os.environ['STEPPO_DATA_DIR']!r}"
    else:
        candidates = [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]
        root = next((c.resolve() for c in candidates if c.is_dir()), candidates[0])
        origin = "the default ../shared/data"
    path = root / subdir if subdir else root
    if not path.is_dir():
        raise DataDirError(
            f"steppo data directory {str(path)!r} (from {origin}) does not exist: "
            "pass data_dir=... to the environment or set STEPPO_DATA_DIR to the folder holding the data."
        )
    return path.resolve()


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under steppo's cache directory."""
    env = os.environ.get("STEPPO_CACHE_DIR")
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "steppo"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
