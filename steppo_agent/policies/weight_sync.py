"""Pushing new weights into a live vLLM engine (no restart).

The trainer writes a state dict to a safetensors file (:func:`write_weights`, under ``/dev/shm``
when it exists); every vLLM worker then runs :meth:`WeightSyncExtension.steppo_reload_weights`
(through ``LLM.collective_rpc`` in-process or the server's ``/collective_rpc`` in dev mode), which

1. streams the file into the model runner's ``reload_weights(weights_iterator=...)`` (the CPU
   backend's prepacked linear layers need this path; ``model.load_weights`` leaves them stale),
2. re-runs ``lm_head.quant_method.process_weights_after_loading(lm_head)`` when embeddings are
   tied (the CPU output layer keeps a packed copy of the old embedding otherwise).

The caller then resets the prefix cache (cached blocks hold keys/values of the old weights).
Only file paths cross the process boundary (tensors would arrive as lists).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["WEIGHT_SYNC_EXTENSION", "WeightSyncExtension", "iter_weight_files", "push_weights", "write_weights"]

WEIGHT_SYNC_EXTENSION = "steppo_agent.policies.weight_sync.WeightSyncExtension"


def write_weights(state_dict: Mapping[str, Any], directory: str | os.PathLike[str] | None = None) -> Path:
    """Write ``state_dict`` (HF parameter names) to a new safetensors file and return its path.

    Tensors sharing storage (tied embeddings) are written once. ``directory`` defaults to
    ``/dev/shm`` (RAM) when it exists, else the system temp folder. The caller deletes the file.
    """
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    if directory is None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="steppo-weights-", suffix=".safetensors", dir=directory)
    os.close(fd)
    save_file(tensors, path)
    return Path(path)


def push_weights(policy: Any, state_dict: Mapping[str, Any], directory: str | os.PathLike[str] | None = None) -> int:
    """Send ``state_dict`` to a rollout policy; return its new weight version.

    An in-process policy (vLLM, transformers) takes the tensors (``load_weights``); OpenAI-compatible
    servers (``load_weights_from_path``) read a file that :func:`write_weights` puts in ``directory``
    (default ``/dev/shm``; servers on other machines need a folder they can read, e.g. a shared
    filesystem: the trainer's ``weights_dir``). The file is deleted once the servers have loaded it.
    """
    if hasattr(policy, "load_weights"):
        return int(policy.load_weights(state_dict))
    if hasattr(policy, "load_weights_from_path"):
        path = write_weights(state_dict, directory)
        try:
            return int(policy.load_weights_from_path(str(path)))
        finally:
            path.unlink(missing_ok=True)
    raise TypeError(f"policy backend {type(policy).__name__} cannot receive weights: use the vllm, hf or openai backend.")


def iter_weight_files(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, tensor)`` from a safetensors file or every ``*.safetensors`` file of a folder."""
    from safetensors import safe_open

    root = Path(path)
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"no .safetensors files at {str(root)!r}: pass a safetensors file or a folder holding them.")
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, handle.get_tensor(name)


class _ExpectedReloadNotices(logging.Filter):
    """vLLM's layer-wise reload warns "<Layer>: Failed to load weights" for layers the file has no
    tensors for and puts their current tensors back. That is expected for rotary embeddings (no
    weights) and for a tied output layer (its weights are the embedding's, refreshed right after by
    ``steppo_refresh_tied_output``); any other layer still warns."""

    def __init__(self, tied: bool) -> None:
        super().__init__()
        self.expected = {"RotaryEmbedding", *(("ParallelLMHead",) if tied else ())}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (record.msg == "%s: Failed to load weights" and isinstance(args, tuple) and args
                    and args[0] in self.expected)


_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class WeightSyncExtension:
    """vLLM worker extension (``worker_extension_cls``): reload weights from a file in place.

    Methods run on each worker with ``self`` the worker (attributes ``model_runner`` and
    ``reload_weights`` come from vLLM's ``Worker``).
    """

    model_runner: Any
    reload_weights: Any  # Worker.reload_weights(weights_iterator=...) (declared only: the worker has it)

    def steppo_reload_weights(self, path: str) -> int:
        """Load the weights at ``path`` into the running model; return how many tensors were read."""
        count = 0

        def counted() -> Iterator[tuple[str, Any]]:
            nonlocal count
            for item in iter_weight_files(path):
                count += 1
                yield item

        notices = _ExpectedReloadNotices(tied=self._tied())
        logging.getLogger(_RELOAD_LOGGER).addFilter(notices)
        try:
            self.reload_weights(weights_iterator=counted())
        finally:
            logging.getLogger(_RELOAD_LOGGER).removeFilter(notices)
        self.steppo_refresh_tied_output()
        return count

    def _tied(self) -> bool:
        hf_config = self.model_runner.model_config.hf_config
        text_config = getattr(hf_config, "get_text_config", lambda: hf_config)()
        return bool(getattr(text_config, "tie_word_embeddings", getattr(hf_config, "tie_word_embeddings", False)))

    def steppo_refresh_tied_output(self) -> bool:
        """Re-process a tied output layer after its embedding changed; return whether one was found."""
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        quant_method = getattr(lm_head, "quant_method", None)
        if not self._tied() or quant_method is None:
            return False
        quant_method.process_weights_after_loading(lm_head)
        return True

    def steppo_dense_layer_kernels(self) -> dict[str, int]:
        """How many layers of the loaded model run each CPU dense kernel, by the name of the function
        their ``cpu_linear`` calls: ``"linear"`` (torch's ``F.linear``), ``"onednn_mm"`` (vLLM's
        oneDNN handlers), ``"weight_packed_linear_cpu"``, ... (empty off the CPU backend). Tells a
        caller whether ``cpu_linear`` reached the worker (``/collective_rpc`` of a server)."""
        kernels: dict[str, int] = {}
        for module in self.model_runner.get_model().modules():
            code = getattr(getattr(module, "cpu_linear", None), "__code__", None)
            if code is not None and code.co_names:
                kernels[code.co_names[-1]] = kernels.get(code.co_names[-1], 0) + 1
        return kernels
