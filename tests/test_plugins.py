"""Ids of installed packages that declare Gymnasium's ``gymnasium.envs`` entry point: ``steppo envs``
lists them and every ``--env`` takes them.

The test package is "installed" by putting a folder on ``sys.path`` / ``PYTHONPATH`` that holds the
package and a ``*.dist-info`` folder (``METADATA`` + ``entry_points.txt``): ``importlib.metadata``
finds it like a pip-installed distribution.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import pytest

import steppo_envs
from steppo_envs import check_step_env, load_plugin_envs

TESTS = Path(__file__).resolve().parent

LABELS = '''
from typing import Literal

from steppo_envs import tool_env

CLAIMS = [{"id": "y1", "claim": "Water is wet.", "label": "yes"}, {"id": "n1", "claim": "Fire is cold.", "label": "no"}]


def answer(label: Literal["yes", "no"]) -> str:
    """Say whether the claim is true; this ends the episode."""
    return label


LabelEnv = tool_env("plugtest/YesNo-v0", tasks=CLAIMS, tools=[answer], prompt="Is it true? {claim}",
                    reward=lambda claim, label: float(label == claim["label"]), max_steps=2,
                    instructions="Yes/no claims (plugin test).")
'''

HOOKS = '''
import gymnasium


def register_envs():
    import steppotest_plugin.labels  # noqa: F401  (tool_env registers plugtest/YesNo-v0)


def register_raw():
    gymnasium.register("YesNoRaw-v0", entry_point="steppotest_plugin.labels:LabelEnv")  # namespace from the entry point


def explode():
    raise RuntimeError("this plugin is broken")


def clash():
    gymnasium.register("MultiHopQA-v0", entry_point="steppotest_plugin.labels:LabelEnv")  # namespace steppo: a bundled id
'''


def _dist(site: Path, name: str, summary: str, entry_points: str) -> None:
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\nSummary: {summary}\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the package ``steppotest_plugin`` and its distribution metadata (two hooks)."""
    root = tmp_path_factory.mktemp("site")
    pkg = root / "steppotest_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(HOOKS)
    (pkg / "labels.py").write_text(LABELS)
    _dist(root, "steppotest_plugin", "Yes/no test environments.",
          "[gymnasium.envs]\nplugtest = steppotest_plugin:register_envs\nplugraw = steppotest_plugin:register_raw\n")
    return root


def _env(site: Path, cache: Path) -> dict[str, str]:
    path = os.pathsep.join([str(site), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "STEPPO_CACHE_DIR": str(cache)}


def _steppo(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from steppo.cli import main; sys.exit(main())", *args]


def test_steppo_envs_lists_the_ids_of_an_installed_plugin(site: Path, tmp_path: Path) -> None:
    done = subprocess.run(_steppo("envs"), env=_env(site, tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line.split()[0]: " ".join(line.split()[1:]) for line in done.stdout.splitlines() if line.strip()}
    assert lines["plugtest/YesNo-v0"] == "Yes/no claims (plugin test)."  # registered by tool_env with a description
    assert lines["plugraw/YesNoRaw-v0"] == "Yes/no test environments."  # plain gymnasium.register: the package summary
    assert list(lines)[:4] == [e.id for e in steppo_envs.BUNDLED] and "Warning" not in done.stderr


def test_a_plugin_id_works_in_play(site: Path, tmp_path: Path) -> None:
    done = subprocess.run(_steppo("play", "plugtest/YesNo-v0", "--seed", "0"), env=_env(site, tmp_path),
                          input="Answer[maybe]\n<answer>yes</answer>\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "invalid: argument 'label' of tool 'answer'" in done.stdout and "episode terminated" in done.stdout


def test_plugins_load_in_process_and_a_broken_one_only_warns(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken"
    _dist(broken, "steppotest_broken", "Broken.", "[gymnasium.envs]\nplugbroken = steppotest_plugin:explode\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(broken))
    importlib.invalidate_caches()
    with pytest.warns(RuntimeWarning, match="plugbroken = steppotest_plugin:explode of the package steppotest_broken failed"):
        ids = load_plugin_envs()
    assert {"plugtest/YesNo-v0", "plugraw/YesNoRaw-v0"} <= set(ids) <= set(steppo_envs.registered_ids())
    assert load_plugin_envs() == []  # each hook runs once per process
    from gymnasium.envs import registration

    assert registration.current_namespace is None  # the broken hook left no namespace behind
    for env_id in ("plugtest/YesNo-v0", "plugraw/YesNoRaw-v0"):
        env = gymnasium.make(env_id)
        check_step_env(env)
        env.reset(seed=0, options={"task_index": 0})
        assert env.step("Answer[yes]")[1:3] == (1.0, True)


def test_a_plugin_cannot_replace_a_bundled_id(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clashing = tmp_path / "clashing"
    _dist(clashing, "steppotest_clash", "Clash.", "[gymnasium.envs]\nsteppo = steppotest_plugin:clash\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(clashing))
    importlib.invalidate_caches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_plugin_envs()
    failures = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert [m for m in failures if "steppotest_clash" in m] == [
        "the gymnasium.envs plugin steppo = steppotest_plugin:clash of the package steppotest_clash failed (ConfigError: "
        "steppo/MultiHopQA-v0 is already registered with the entry point steppo_envs.multihop.env:MultiHopQAEnv, so it "
        "cannot be registered again with steppotest_plugin.labels:LabelEnv: choose another id for the new environment.): "
        "fix or uninstall that package."
    ]
    assert gymnasium.spec("steppo/MultiHopQA-v0").entry_point == "steppo_envs.multihop.env:MultiHopQAEnv"


def test_worker_processes_rebuild_a_plugin_tool_env(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers N`` sends the env spec to spawned processes: the tool env's definition pickles as a
    reference (id + defining module) that the worker imports."""
    from steppo_agent.env_pool import EnvPool

    monkeypatch.syspath_prepend(str(site))  # spawned workers inherit sys.path
    importlib.invalidate_caches()
    load_plugin_envs()
    pool = EnvPool("plugtest/YesNo-v0", {"max_steps": 3}, workers=1)
    try:
        first = pool.reset_many([(0, 0)])[0]
        step = pool.step_many([(0, "<answer>no</answer>")])[0]
    finally:
        pool.close()
    assert first.error is None and first.info["task_id"] in ("y1", "n1") and first.info["max_steps"] == 3
    assert step.error is None and step.terminated and step.reward == float(first.info["task_id"] == "n1")
