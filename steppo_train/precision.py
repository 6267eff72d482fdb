"""Where bfloat16 pays: the ``amp="auto"`` decision, made at run time and printed once.

bfloat16 matrix products are fast only where the hardware has them: CUDA GPUs with bf16 support,
and CPUs with AVX512-BF16 or AMX. On a CPU with AVX2 only, torch runs them about 30x *slower* than
float32 (256x576 @ 576x1536 on 2 threads: 18 ms float32, 566 ms bfloat16, 523 ms float32 under
``torch.autocast(bfloat16)``), so autocast there turns a minutes-long update into an hours-long one.

:func:`resolve_amp` turns the ``amp`` setting (``"auto"``, ``True`` or ``False``) into a bool:
``"auto"`` is on exactly where :func:`bf16_support` says bf16 is native. It prints one line saying
what was chosen and why; an explicit ``amp=True`` where bf16 is not native warns, with the slowdown
measured by a short probe (:func:`bf16_slowdown`).

The CPU decision follows what the kernels will use, not only what the chip has: oneDNN's
``ONEDNN_MAX_CPU_ISA`` and torch's ``ATEN_CPU_CAPABILITY`` can cap the instruction set below the
chip's (and are how a CPU without native bf16 is simulated on one with it).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from steppo_envs.config import ConfigError

__all__ = ["AmpSetting", "Bf16Support", "bf16_slowdown", "bf16_support", "cpu_bf16_native", "describe_cpu", "resolve_amp"]

AmpSetting = bool | Literal["auto"]

# oneDNN's instruction-set names, lowest first; bf16 dot products start at AVX512_CORE_BF16.
_ONEDNN_ISAS = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT",
)
_FIRST_BF16_ISA = _ONEDNN_ISAS.index("AVX512_CORE_BF16")


@dataclass(frozen=True)
class Bf16Support:
    """Whether bfloat16 compute is native on a device, and why (one readable sentence)."""

    native: bool
    device: str
    reason: str


def cpu_bf16_native(avx512_bf16: bool, amx_bf16: bool, onednn_max_isa: str | None, aten_capability: str) -> tuple[bool, str]:
    """Pure decision for a CPU: native iff the chip has AVX512-BF16 or AMX *and* neither
    ``ONEDNN_MAX_CPU_ISA`` (below AVX512_CORE_BF16) nor torch's CPU capability (below AVX512) caps it.

    Returns ``(native, reason)``.
    """
    chip = [name for name, has in (("AMX", amx_bf16), ("AVX512-BF16", avx512_bf16)) if has]
    if not chip:
        return False, f"this CPU has no native bf16 (no AVX512-BF16 or AMX; torch capability {aten_capability})"
    isa = (onednn_max_isa or "").strip().upper()
    if isa and isa in _ONEDNN_ISAS and _ONEDNN_ISAS.index(isa) < _FIRST_BF16_ISA:
        return False, f"ONEDNN_MAX_CPU_ISA={isa} caps oneDNN below its bf16 kernels (the CPU has {' and '.join(chip)})"
    if aten_capability.upper() not in ("AVX512", "AMX", "ZVECTOR", "SVE256", "SVE"):
        return False, f"torch runs at CPU capability {aten_capability} (ATEN_CPU_CAPABILITY), below its bf16 kernels"
    return True, f"this CPU has native bf16 ({' and '.join(chip)})"


def bf16_support(device: torch.device | str = "cpu") -> Bf16Support:
    """Probe ``device`` (a CUDA device: ``torch.cuda.is_bf16_supported``; the CPU: see :func:`cpu_bf16_native`)."""
    device = torch.device(device)
    if device.type == "cuda":
        native = bool(torch.cuda.is_bf16_supported())
        name = torch.cuda.get_device_name(device)
        return Bf16Support(native, "cuda", f"{name} {'supports' if native else 'does not support'} bf16")
    if device.type != "cpu":
        return Bf16Support(False, device.type, f"no bf16 probe for device type {device.type!r}")
    native, reason = cpu_bf16_native(
        avx512_bf16=bool(torch.cpu._is_avx512_bf16_supported()),  # private but stable since torch 2.1
        amx_bf16=bool(torch.cpu._is_amx_tile_supported()),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"),
        aten_capability=str(torch.backends.cpu.get_cpu_capability()),
    )
    return Bf16Support(native, "cpu", reason)


def bf16_slowdown(budget_s: float = 0.1, size: tuple[int, int, int] = (64, 576, 576)) -> float:
    """Time of one bf16-autocast matrix product over one float32 product on the CPU (median of a few,
    within about ``budget_s``): below 1 where bf16 is native, 30-100 where it is emulated."""
    m, k, n = size
    a, b = torch.randn(m, k), torch.randn(k, n)

    def once(autocast: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            a @ b
        return time.perf_counter() - start

    once(False), once(True)  # warm-up (kernel selection)
    fp32, bf16 = [once(False)], [once(True)]
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline and len(bf16) < 9:
        fp32.append(once(False))
        bf16.append(once(True))
    return sorted(bf16)[len(bf16) // 2] / max(sorted(fp32)[len(fp32) // 2], 1e-9)


def describe_cpu() -> str:
    """One line for benchmark output: the CPU model, its vector/bf16 flags, torch's capability and
    any instruction-set cap (what every reported figure needs beside it)."""
    model = "unknown CPU"
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    caps = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)]
    return (f"{model}; flags: {' '.join(shown) or 'none of avx2/avx512/bf16/amx'}; "
            f"torch capability {torch.backends.cpu.get_cpu_capability()}" + (f"; {', '.join(caps)}" if caps else ""))


_announced: set[tuple[str, str, bool]] = set()


def resolve_amp(setting: AmpSetting, device: torch.device | str = "cpu", *, announce: bool = True) -> bool:
    """``amp`` as a bool for ``device``: ``"auto"`` = on where bf16 is native; print the decision once.

    An explicit ``True`` where bf16 is not native is honoured with a warning that names the
    measured slowdown and the fix (``amp=auto``).
    """
    if setting not in (True, False, "auto"):
        raise ConfigError(f"amp must be true, false or \"auto\", not {setting!r}: use --set amp=auto.")
    support = bf16_support(device)
    if setting == "auto":
        chosen = support.native
        line = f"steppo: amp=auto -> {'on (bf16 autocast)' if chosen else 'off (float32)'}: {support.reason}"
    else:
        chosen = bool(setting)
        line = f"steppo: amp={str(chosen).lower()} (set explicitly): {support.reason}"
        if chosen and not support.native and support.device == "cpu":
            factor = bf16_slowdown()
            warnings.warn(
                f"amp=true on a CPU without native bf16: {support.reason}; a bf16 matrix product measured "
                f"{factor:.0f}x slower than float32 here, so training will be much slower. Use amp=auto (or false).",
                RuntimeWarning,
                stacklevel=2,
            )
    key = (str(setting), support.device, chosen)
    if announce and key not in _announced:
        _announced.add(key)
        print(line, file=sys.stderr, flush=True)
    return chosen
