"""``import steppo_envs`` (and building MultiHopQA) never imports torch, vllm or textworld."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "vllm", "textworld")


def _run(code: str) -> None:
    check = f"import sys\n{code}\nbad = [m for m in {HEAVY!r} if m in sys.modules]\nassert not bad, bad\n"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_import_steppo_envs_is_light() -> None:
    _run("import steppo_envs")


def test_multihop_env_is_light() -> None:
    _run("import steppo_envs.multihop\nfrom steppo_envs.multihop import MultiHopQAEnv\nMultiHopQAEnv().reset(seed=0)")
