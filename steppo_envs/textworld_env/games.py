"""TextWorld game presets, the on-disk game cache and the train / eval game pools.

A game is named by ``(preset, level, seed)`` and cached as ``<id>.z8`` plus ``<id>.json`` (the
TextWorld game description that admissible commands, the walkthrough and the expert need) under
``cache_dir("textworld", "tw<version>", preset)``. Pools are disjoint seed ranges: the train pool
uses seeds ``0 .. pool_size-1`` and the eval pool ``100000 .. 100000+pool_size-1``.

Generation is safe when several processes ask for the same game at once: each game is generated
under an exclusive file lock into a private temporary folder, then moved into place with atomic
renames (the ``.json`` first, the ``.z8`` last, so a present ``.z8`` means a complete game).

Importing this module does not import textworld; the generating functions do.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from steppo_envs.config import ConfigError
from steppo_envs.contract import optional_import
from steppo_envs.paths import cache_dir

__all__ = [
    "EVAL_SEED_START",
    "PRESETS",
    "TRAIN_SEED_START",
    "GameRef",
    "Pool",
    "Preset",
    "ensure_games",
    "game_id",
    "game_ref",
    "generate_game",
    "pool_refs",
    "pool_seeds",
    "user_game_refs",
]

Pool = Literal["train", "eval"]

TRAIN_SEED_START = 0
EVAL_SEED_START = 100_000


def _simple(level: int) -> dict[str, Any]:
    rewards, goal = {1: ("dense", "detailed"), 2: ("balanced", "brief"), 3: ("sparse", "none")}[level]
    return {"rewards": rewards, "goal": goal, "test": False}


def _cooking(level: int, seed: int) -> dict[str, Any]:
    recipe, take, go, open_, cook, cut, drop = {
        1: (1, 1, 1, False, False, False, False),
        2: (1, 1, 1, True, False, True, False),
        3: (2, 2, 6, True, True, True, False),
        4: (3, 3, 9, True, True, True, False),
        5: (3, 3, 12, True, True, True, True),
    }[level]
    return {
        "recipe": recipe, "take": take, "go": go, "open": open_, "cook": cook, "cut": cut, "drop": drop,
        "recipe_seed": seed, "split": None,
    }  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """A named family of generated games.

    Attributes:
        name: the preset name used in configs and game ids.
        challenge: the TextWorld challenge it generates with (``tw-make <challenge>``).
        max_level: levels run from 1 to this.
        levels: what the levels mean.
        settings: ``(level, seed) -> challenge settings`` (the ``tw-make`` options).
    """

    name: str
    challenge: str
    max_level: int
    levels: str
    settings: Callable[[int, int], dict[str, Any]]


PRESETS: dict[str, Preset] = {
    "simple": Preset(
        "simple", "tw-simple", 3,
        "1: dense rewards, detailed goal; 2: balanced rewards, brief goal; 3: sparse rewards, no goal text "
        "(a fixed 6-room house; seeds vary objects and quest).",
        lambda level, seed: _simple(level),
    ),
    "coin_collector": Preset(
        "coin_collector", "tw-coin_collector", 300,
        "TextWorld's levels: quest length = (level-1) % 100 + 1 rooms to the coin; levels 101-200 add "
        "distractor rooms, 201-300 more of them.",
        lambda level, seed: {"level": level},
    ),
    "treasure_hunter": Preset(
        "treasure_hunter", "tw-treasure_hunter", 30,
        "TextWorld's levels: 1-10 easy (5 rooms, quest length 1-5), 11-20 medium (10 rooms, closed doors "
        "and containers), 21-30 hard (20 rooms, locked doors and containers).",
        lambda level, seed: {"level": level},
    ),
    "cooking": Preset(
        "cooking", "tw-cooking", 5,
        "1: one ingredient in the kitchen; 2: + open containers and cut; 3: two ingredients, 6 rooms, "
        "+ cook; 4: three ingredients, 9 rooms; 5: three ingredients, 12 rooms, limited inventory.",
        _cooking,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class GameRef:
    """One game of a pool: its id (the ``task_id``), its ``.z8`` path and how to generate it.

    ``preset`` is ``None`` for a user-supplied file (nothing to generate).
    """

    id: str
    path: Path
    preset: str | None = None
    level: int = 0
    seed: int = 0

    @property
    def json_path(self) -> Path:
        return self.path.with_suffix(".json")

    def exists(self) -> bool:
        return self.path.is_file() and self.json_path.is_file()


def check_preset(preset: str, level: int) -> Preset:
    """The :class:`Preset` named ``preset``, checking ``level``; raises :class:`ConfigError` otherwise."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown TextWorld preset {preset!r}: use one of {', '.join(PRESETS)}.")
    spec = PRESETS[preset]
    if not 1 <= level <= spec.max_level:
        raise ConfigError(f"level {level} is out of range for preset {preset!r}: use 1..{spec.max_level}.")
    return spec


def game_id(preset: str, level: int, seed: int) -> str:
    """``"simple-L1-seed12"``: the cache file stem and the env's ``task_id``."""
    return f"{preset}-L{level}-seed{seed}"


def _cache_folder(preset: str, root: str | os.PathLike[str] | None = None) -> Path:
    try:
        version = importlib.metadata.version("textworld")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if root is not None:
        path = Path(root).expanduser() / f"tw{version}" / preset
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_dir("textworld", f"tw{version}", preset)


def game_ref(preset: str, level: int, seed: int, *, root: str | os.PathLike[str] | None = None) -> GameRef:
    """The cache entry of one generated game (it may not exist yet)."""
    check_preset(preset, level)
    gid = game_id(preset, level, seed)
    return GameRef(gid, _cache_folder(preset, root) / f"{gid}.z8", preset, level, seed)


def pool_seeds(pool: Pool, size: int) -> list[int]:
    """Seeds of a pool: train ``0..size-1``, eval ``100000..100000+size-1`` (disjoint for size <= 100000)."""
    if pool not in ("train", "eval"):
        raise ConfigError(f"pool must be 'train' or 'eval', got {pool!r}.")
    if not 1 <= size <= EVAL_SEED_START:
        raise ConfigError(f"pool_size must be between 1 and {EVAL_SEED_START}, got {size}.")
    start = TRAIN_SEED_START if pool == "train" else EVAL_SEED_START
    return list(range(start, start + size))


def pool_refs(
    preset: str, level: int, pool: Pool, size: int, *, root: str | os.PathLike[str] | None = None
) -> list[GameRef]:
    """The games of a pool, in seed order (not generated here)."""
    return [game_ref(preset, level, s, root=root) for s in pool_seeds(pool, size)]


def user_game_refs(files: Sequence[str | os.PathLike[str]]) -> list[GameRef]:
    """Refs for user-supplied TextWorld ``.z8`` games, each with its ``.json`` next to it."""
    refs = []
    for f in files:
        path = Path(f).expanduser().resolve()
        if path.suffix != ".z8" or not path.is_file():
            raise ConfigError(f"game file {str(f)!r} is not an existing .z8 file: pass paths to games made with tw-make.")
        if not path.with_suffix(".json").is_file():
            raise ConfigError(
                f"game file {str(f)!r} has no {path.with_suffix('.json').name} next to it: keep the .json that "
                "tw-make writes with each game (it holds the admissible commands and the walkthrough)."
            )
        refs.append(GameRef(path.stem, path))
    if len({r.id for r in refs}) != len(refs):
        raise ConfigError("game_files holds two files with the same name: give each game a distinct file name.")
    return refs


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames alone still keep the cache consistent
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def generate_game(ref: GameRef) -> Path:
    """Generate ``ref`` into the cache unless it is there already; returns the ``.z8`` path.

    Process-safe (file lock + temporary folder + atomic renames). Takes a few seconds per game.
    """
    if ref.exists():
        return ref.path
    if ref.preset is None:
        raise ConfigError(f"game {str(ref.path)!r} is missing and cannot be generated: check the game_files paths.")
    textworld = optional_import("textworld", "textworld")
    optional_import("textworld.challenges", "textworld")
    spec = check_preset(ref.preset, ref.level)
    folder = ref.path.parent
    with _file_lock(folder / f".{ref.id}.lock"):
        if ref.exists():  # another process made it while we waited
            return ref.path
        tmp = Path(tempfile.mkdtemp(prefix=f".{ref.id}.", dir=folder))
        try:
            options = textworld.GameOptions()
            options.seeds = ref.seed
            options.path = str(tmp / f"{ref.id}.z8")
            options.file_ext = ".z8"
            make = textworld.challenges.CHALLENGES[spec.challenge][1]
            try:
                game = make(settings=spec.settings(ref.level, ref.seed), options=options)
            except Exception as exc:
                raise RuntimeError(
                    f"TextWorld could not generate {ref.id} ({type(exc).__name__}: {exc}): try another level or pool."
                ) from exc
            built = Path(textworld.generator.compile_game(game, options))
            os.replace(built.with_suffix(".json"), ref.json_path)
            os.replace(built, ref.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ref.path


def ensure_games(refs: Sequence[GameRef], *, progress: bool = True, desc: str = "generating TextWorld games") -> None:
    """Generate every missing game of ``refs``, with progress (a bar on a terminal, timed lines in a log)."""
    missing = [r for r in refs if not r.exists()]
    if not missing:
        return
    from steppo_envs.progress import progress_bar

    for ref in progress_bar(missing, desc=desc, unit="game", enabled=progress and len(missing) > 1):
        generate_game(ref)
