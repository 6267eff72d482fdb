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
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import gymnasium

from steppo_envs.config import ConfigError

__all__ = ["PLUGIN_GROUP", "check_env_id", "run_plugin_hooks"]

#: The entry-point group whose hooks register environments (Gymnasium's plugin convention).
PLUGIN_GROUP = "gymnasium.envs"

_RUN: set[tuple[str, str]] = set()


def check_env_id(id: str) -> None:
    """Raise :class:`ConfigError` unless ``id`` looks like ``namespace/Name-vN``."""
    if "/" not in id or not id.split("/")[-1].split("-v")[-1].isdigit():
        raise ConfigError(f"environment id {id!r} must look like 'namespace/Name-vN', e.g. 'myorg/MyTask-v0'.")


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
        gym_before, described_before = set(gymnasium.registry), set(descriptions)
        exc = _run_hook(ep.name, ep.value)
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
