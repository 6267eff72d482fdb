"""amp="auto": bf16 autocast exactly where bf16 is native (simulated capabilities and the real probe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from steppo_train import precision  # noqa: E402
from steppo_train.config import load_config  # noqa: E402
from steppo_train.precision import Bf16Support, cpu_bf16_native, resolve_amp  # noqa: E402


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "isa", "capability", "native"),
    [
        (False, False, None, "AVX2", False),  # AMD EPYC / laptop CPU with AVX2 only
        (False, False, None, "AVX512", False),  # AVX-512 without the bf16 extension (e.g. Skylake-SP)
        (True, False, None, "AVX512", True),  # AVX512-BF16 (Cooper Lake, Zen 4)
        (True, True, None, "AVX512", True),  # AMX (Sapphire Rapids and later)
        (True, True, "AVX2", "AVX512", False),  # oneDNN capped below its bf16 kernels
        (True, True, "avx512_core_amx", "AVX512", True),
        (True, True, None, "AVX2", False),  # ATEN_CPU_CAPABILITY=avx2
    ],
)
def test_cpu_bf16_decision(avx512_bf16: bool, amx: bool, isa: str | None, capability: str, native: bool) -> None:
    decided, reason = cpu_bf16_native(avx512_bf16, amx, isa, capability)
    assert decided is native
    assert reason.startswith("this CPU has native bf16") is native


def _simulate(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    support = Bf16Support(native, "cpu", "simulated CPU " + ("with" if native else "without") + " native bf16")
    monkeypatch.setattr(precision, "bf16_support", lambda device="cpu": support)
    monkeypatch.setattr(precision, "_announced", set())


def test_auto_is_off_without_native_bf16_and_says_so_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _simulate(monkeypatch, native=False)
    assert resolve_amp("auto") is False
    assert resolve_amp("auto") is False
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["steppo: amp=auto -> off (float32): simulated CPU without native bf16"]


def test_auto_is_on_with_native_bf16(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _simulate(monkeypatch, native=True)
    assert resolve_amp("auto") is True
    assert "amp=auto -> on (bf16 autocast)" in capsys.readouterr().err
    assert resolve_amp(False, announce=False) is False


def test_forced_amp_without_native_bf16_warns_with_the_measured_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    _simulate(monkeypatch, native=False)
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: 31.0)
    with pytest.warns(RuntimeWarning, match=r"31x slower than float32 here.*amp=auto"):
        assert resolve_amp(True, announce=False) is True


def test_bad_amp_values_are_config_errors() -> None:
    with pytest.raises(ValueError, match="amp.*'auto'"):
        load_config("grpo", overrides={"amp": "fast"})
    assert load_config("grpo").amp == "auto"
    assert load_config("grpo", overrides={"amp": "auto"}).amp == "auto"


def test_real_probe_follows_a_capped_instruction_set() -> None:
    """On this machine's real CPU, capping oneDNN at AVX2 (how an AVX2-only CPU is simulated) turns
    auto off, whatever the chip has; uncapped, the answer matches the chip's flags and torch's
    capability as that process sees them."""
    code = (
        "import json, torch; from steppo_train.precision import bf16_support; print(json.dumps(["
        "bf16_support('cpu').native, bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()),"
        "torch.backends.cpu.get_cpu_capability()]))"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    capped = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(capped.stdout)[0] is False
    env.pop("ONEDNN_MAX_CPU_ISA")
    env.pop("ATEN_CPU_CAPABILITY", None)
    free = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    native, chip, capability = json.loads(free.stdout)
    assert native is (chip and capability in ("AVX512", "AMX"))
