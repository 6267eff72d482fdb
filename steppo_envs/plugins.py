"""Environment plugins: ids registered by installed packages, listed by ``steppo envs``.

Plugins follow Gymnasium's entry-point convention (the one Gymnasium 0.26-0.29 loaded itself and
Gymnasium 1.x no longer loads): an installed package declares, in its ``pyproject.toml``::

    [project.entry-points."gymnasium.envs"]
    myproj = "myproj.envs:register_envs"

and ``import steppo_envs`` calls ``myproj.envs.register_envs()`` inside Gymnasium's namespace
``myproj``, so ``gymnasium.register("Label-v0", ...)`` there registers ``myproj/Label-v0`` (the
entry-point name ``__root__`` means no namespace). ``steppo_envs.register("myproj/Label-v0", ...)``
and ``steppo_envs.tool_env("myproj/Label-v0", ...)`` work there too: name the entry point after the
namespace of your ids. A value without ``:function`` only imports the module (its import registers).
A hook that raises is reported with a ``RuntimeWarning`` and skipped; every other id keeps working.
A hook that registers an id that exists already with another entry point (e.g. a ``steppo/...`` id)
is refused the same way: the first registration stays, the warning names both entry points.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import gymnasium

from steppo_envs.config import ConfigError

__all__ = ["PLUGIN_GROUP", "check_env_id", "check_reregistration", "entry_point_name", "run_plugin_hooks"]

#: The entry-point group whose hooks register environments (Gymnasium's plugin convention).
PLUGIN_GROUP = "gymnasium.envs"

_RUN: set[tuple[str, str]] = set()


def check_env_id(id: str) -> None:
    """Raise :class:`ConfigError` unless ``id`` looks like ``namespace/Name-vN``."""
    if "/" not in id or not id.split("/")[-1].split("-v")[-1].isdigit():
        raise ConfigError(f"environment id {id!r} must look like 'namespace/Name-vN', e.g. 'myorg/MyTask-v0'.")


def entry_point_name(entry_point: Any) -> str:
    """How registrations compare and how messages name an entry point: a ``"module:Class"`` string as
    it is; a class or function as ``module:qualname`` (so it equals the string that names it); an
    object with an ``entry_point_name`` (a :func:`~steppo_envs.tool_env` definition) by that name."""
    if isinstance(entry_point, str):
        return entry_point
    own = getattr(entry_point, "entry_point_name", None)
    if isinstance(own, str):
        return own
    return f"{getattr(entry_point, '__module__', '?')}:{getattr(entry_point, '__qualname__', repr(entry_point))}"


def check_reregistration(id: str, entry_point: Any) -> None:
    """Raise :class:`ConfigError` naming both entry points when ``id`` is registered already with
    another entry point; the same entry point again is fine (the caller keeps the registration)."""
    existing = gymnasium.registry.get(id)
    if existing is None:
        return
    old, new = entry_point_name(existing.entry_point), entry_point_name(entry_point)
    if old != new:
        raise _clash(id, old, new)


def _clash(id: str, old: str, new: str) -> ConfigError:
    return ConfigError(
        f"{id} is already registered with the entry point {old}, so it cannot be registered again with {new}: "
        "choose another id for the new environment."
    )


def _entry_points() -> dict[str, str]:
    return {env_id: entry_point_name(spec.entry_point) for env_id, spec in gymnasium.registry.items()}


def _run_hook(name: str, value: str) -> Exception | None:
    """Import the entry point's module and call its function (if it names one) inside Gymnasium's
    namespace ``name``; return what it raised. (Gymnasium's own ``namespace()`` context manager does
    not restore the namespace when the body raises: a broken hook would rename every later id.)"""
    from gymnasium.envs import registration

    previous = registration.current_namespace
    registration.current_namespace = None if name in ("__root__", "__internal__") else name
    try:
        module, _, attr = value.partition(":")
        target: Any = importlib.import_module(module.strip())
        if attr.strip():
            for part in attr.strip().split("."):
                target = getattr(target, part)
            target()
    except Exception as exc:  # a broken plugin must not break every other environment
        return exc
    finally:
        registration.current_namespace = previous
    return None


def run_plugin_hooks(descriptions: dict[str, str], group: str = PLUGIN_GROUP) -> list[str]:
    """Run the hooks of installed packages that declare the ``group`` entry point (each hook once per
    process) and return the ids they registered, in registration order.

    ``descriptions`` is the registry's listing (id -> one-line description): each new id is added,
    described by its package's ``Summary`` unless the hook gave it a description of its own.
    """
    from importlib import metadata

    new_ids: list[str] = []
    for ep in metadata.entry_points(group=group):
        if (ep.name, ep.value) in _RUN:
            continue
        _RUN.add((ep.name, ep.value))
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else ep.value
        gym_before, described_before = dict(gymnasium.registry), set(descriptions)
        names_before = _entry_points()
        exc = _run_hook(ep.name, ep.value)
        for env_id, name in _entry_points().items():  # a hook that re-registered an id with another entry point
            if env_id in names_before and name != names_before[env_id]:
                gymnasium.registry[env_id] = gym_before[env_id]
                exc = exc or _clash(env_id, names_before[env_id], name)
        if exc is not None:
            warnings.warn(f"the {group} plugin {ep.name} = {ep.value} of the package {package} failed "
                          f"({type(exc).__name__}: {exc}): fix or uninstall that package.", RuntimeWarning, stacklevel=2)
        for env_id in [i for i in descriptions if i not in described_before and i not in gymnasium.registry]:
            del descriptions[env_id]  # renamed by the plugin namespace: its Gymnasium id is listed below
        summary = (dist.metadata.get("Summary") if dist is not None else None) or f"from the installed package {package}"
        for env_id in [i for i in gymnasium.registry if i not in gym_before]:
            descriptions.setdefault(env_id, summary)
            new_ids.append(env_id)
    return new_ids
