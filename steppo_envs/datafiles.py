"""Reading a user's JSON / JSONL data file (questions, paragraphs, papers) with one-line errors.

Both readers of user data (``steppo/MultiHopQA-v0``'s ``dataset="my.jsonl"``, ``steppo/PaperSearch-v0``'s
``questions_file`` / ``corpus_file``) go through :func:`read_records`: a ``.jsonl`` file (optionally
``.gz``) holds one JSON object per line, a ``.json`` file a list of objects (or one object); any other
name is read as JSONL unless it starts with ``[``. A broken file raises :class:`ConfigError` naming the
file, the line (JSONL) or record (JSON list), what is wrong and the expected layout, never a traceback
from ``json``. :func:`file_digest` is the content hash the in-process and on-disk caches are keyed
by, so an edited file is never served from a stale cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steppo_envs.config import ConfigError

__all__ = ["FileRecord", "file_digest", "read_records", "record_error", "user_file"]


@dataclass(frozen=True)
class FileRecord:
    """One object of a data file: ``where`` it is (``"line 3"`` or ``"record 3"``), its 1-based
    ``number`` and its ``data``."""

    where: str
    number: int
    data: dict[str, Any]


def user_file(value: str, option: str, layout: str) -> Path:
    """The existing file ``value`` names (``~`` expanded), or a :class:`ConfigError` naming ``option``."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{option} file {value!r} does not exist: pass the path of a file holding {layout}.")
    return path.resolve()


def file_digest(path: Path) -> str:
    """A SHA-256 content hash of the file (24 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


def record_error(path: Path, where: str, problem: str, layout: str) -> ConfigError:
    """``ConfigError("data file '<path>', line 3: <problem>: fix it; expected <layout>.")``."""
    return ConfigError(f"data file {str(path)!r}, {where}: {problem}: fix it; expected {layout}.")


def _read_text(path: Path, layout: str) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError, EOFError) as exc:  # EOFError: a truncated gzip file
        raise record_error(path, "the whole file", f"it cannot be read as UTF-8 text ({type(exc).__name__})", layout) from None


def _is_jsonl(path: Path, text: str) -> bool:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        return True
    if name.endswith(".json"):
        return False
    return not text.lstrip().startswith("[")


def _object(path: Path, where: str, value: Any, layout: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise record_error(path, where, f"a JSON object was expected, not {type(value).__name__}", layout)
    return value


def read_records(path: Path, layout: str) -> list[FileRecord]:
    """The objects of a JSONL or JSON file (see the module docstring); ``layout`` describes them in errors."""
    text = _read_text(path, layout)
    records: list[FileRecord] = []
    if _is_jsonl(path, text):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise record_error(path, f"line {number}", f"not valid JSON ({exc.msg} at column {exc.colno})", layout) from None
            records.append(FileRecord(f"line {number}", number, _object(path, f"line {number}", value, layout)))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise record_error(path, f"line {exc.lineno}", f"not valid JSON ({exc.msg} at column {exc.colno})", layout) from None
        items = data if isinstance(data, list) else [data]
        for number, value in enumerate(items, start=1):
            records.append(FileRecord(f"record {number}", number, _object(path, f"record {number}", value, layout)))
    if not records:
        raise record_error(path, "the whole file", "it holds no records", layout)
    return records
