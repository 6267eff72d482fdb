"""LoRA adapters through PEFT: the config, wrapping the actor / critic, merged weights for the rollout
engine, and the adapter part of checkpoints.

With ``lora.rank > 0`` every base weight of the actor (and, with ``lora.critic``, of the critic's
transformer) is frozen and each target linear layer ``W`` (``[out, in]``) gets a trainable
low-rank update: the layer computes ``x W^T + s * x A^T B^T`` with ``A`` ``[rank, in]``, ``B``
``[out, rank]`` and ``s = alpha / rank`` (:func:`lora_scale`). ``B`` starts at zero, so training
starts from the base model exactly. The critic's value head stays fully trainable.

* :func:`apply_lora` wraps a loaded model with ``peft.get_peft_model`` (checking the target module
  names against the model's linear layers first) and initialises ``A`` from a seed (no global RNG).
* :func:`rollout_state_dict` is what the rollout engine receives: the base model's state dict under
  its original parameter names with each adapter merged, ``W + s * B @ A`` (:func:`merged_weight`),
  computed as new tensors: the training model is not modified.
* :func:`save_lora_actor` / :func:`load_lora_actor` and :func:`critic_state_dict` /
  :func:`load_critic_state` are the adapter part of checkpoints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from steppo_envs.config import ConfigError
from steppo_envs.config_model import ConfigModel
from steppo_envs.contract import optional_import

if TYPE_CHECKING:  # torch stays unimported until a model is built (the config is imported by the CLI)
    from torch import Tensor, nn

__all__ = [
    "ADAPTER_DIR",
    "LLAMA_PROJECTIONS",
    "LoraConfig",
    "apply_lora",
    "critic_state_dict",
    "is_lora",
    "linear_module_names",
    "load_critic_state",
    "load_lora_actor",
    "lora_scale",
    "merged_weight",
    "rollout_state_dict",
    "save_lora_actor",
]

#: The attention and MLP projections of Llama-style models (Llama, Qwen2, Mistral, SmolLM, ...).
LLAMA_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: The checkpoint folder (beside ``actor/``) holding the actor's adapter (``peft`` format).
ADAPTER_DIR = "actor_adapter"
_ADAPTER = "default"  # the adapter's name inside PEFT


class LoraConfig(ConfigModel):
    """LoRA adapters (PEFT) instead of full fine-tuning; ``rank = 0`` keeps full fine-tuning."""

    rank: int = Field(0, ge=0, description=(
        "LoRA rank r (0 = off: full fine-tuning). With r > 0 the base weights are frozen and each target linear "
        "layer trains a rank-r update B @ A (e.g. 8-64)."))
    alpha: float = Field(16.0, gt=0.0, description=(
        "LoRA alpha: the update is scaled by alpha / rank (commonly 2 * rank, e.g. rank=16 alpha=32)."))
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Dropout on the adapters' input (0 = none; above 0 draws from torch's global RNG, so a resumed run is no "
        "longer bit-exact)."))
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS), description=(
        "Names of the linear layers that get adapters (the last part of a module name); default: the attention and "
        "MLP projections of Llama-style models. A name the model lacks is an error listing its linear layers."))
    critic: bool = Field(True, description=(
        "The critic's transformer gets adapters of its own too (its value head stays fully trained); false = the "
        "critic is fully fine-tuned."))

    @field_validator("target_modules", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``q_proj,v_proj`` (a ``--set`` value that is not JSON) is the list of those names."""
        return [part.strip() for part in value.split(",")] if isinstance(value, str) else value

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, value: list[str]) -> list[str]:
        if not value or any(not name.strip() for name in value):
            raise ConfigError(f"lora.target_modules needs one or more module names, not {value!r}: "
                              "e.g. --set lora.target_modules=q_proj,v_proj.")
        return value

    @property
    def enabled(self) -> bool:
        return self.rank > 0


def lora_scale(alpha: float, rank: int) -> float:
    """The factor of the low-rank update: ``s = alpha / rank``."""
    return alpha / rank


def merged_weight(weight: Tensor, lora_a: Tensor, lora_b: Tensor, scale: float) -> Tensor:
    """A LoRA layer's merged weight ``W + s * B @ A`` (``W`` ``[out, in]``, ``A`` ``[r, in]``, ``B``
    ``[out, r]``), in ``W``'s dtype; the product is taken in float32."""
    return (weight.float() + scale * (lora_b.float() @ lora_a.float())).to(weight.dtype)


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of ``model``'s ``nn.Linear`` modules (what ``target_modules`` may name)."""
    from torch import nn

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name})


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    names = linear_module_names(model)
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ConfigError(f"lora.target_modules {', '.join(unknown)} are not linear layers of this model "
                          f"({type(model).__name__}): choose from {', '.join(names)}, "
                          f"e.g. --set lora.target_modules=q_proj,v_proj.")


def _layer_indices(model: nn.Module, trainable_layers: int | None) -> list[int] | None:
    """The top ``trainable_layers`` block indices (adapters only there), or ``None`` for every block."""
    from torch import nn

    if trainable_layers is None:
        return None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model  # type: ignore[operator]  # a PreTrainedModel method
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"trainable_layers with LoRA needs a decoder with a `.layers` ModuleList "
                          f"({type(decoder).__name__} has none): leave trainable_layers unset.")
    n = len(layers)
    if not 1 <= trainable_layers <= n:
        raise ConfigError(f"trainable_layers must be in 1..{n} for this model, not {trainable_layers}.")
    return list(range(n - trainable_layers, n))


def init_adapters(model: nn.Module, seed: int) -> None:
    """Initialise every adapter from ``seed`` (no global RNG): ``A ~ U(-1/sqrt(in), 1/sqrt(in))`` (PEFT's
    default bound, Kaiming-uniform with ``a = sqrt(5)``) and ``B = 0``, in module-name order."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(param.shape[1])
                param.copy_((torch.rand(param.shape, generator=g) * 2 - 1) * bound)
            elif ".lora_B." in name:
                param.zero_()


def apply_lora(model: nn.Module, config: LoraConfig, *, trainable_layers: int | None = None,
               seed: int = 0) -> nn.Module:
    """``model`` wrapped with PEFT LoRA adapters on ``config.target_modules`` (every base weight frozen;
    with ``trainable_layers`` = N only the top N blocks get adapters). The causal LM's
    ``get_decoder()`` / ``get_output_embeddings()`` / ``config`` stay reachable through the wrapper."""
    peft = optional_import("peft", "lora")
    _check_targets(model, config.target_modules)
    layers = _layer_indices(model, trainable_layers)
    peft_config = peft.LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=list(config.target_modules),
        bias="none", layers_to_transform=layers, layers_pattern="layers" if layers is not None else None,
    )
    wrapped: nn.Module = peft.get_peft_model(model, peft_config)
    init_adapters(wrapped, seed)
    return wrapped


def is_lora(model: nn.Module) -> bool:
    """True for a model wrapped by :func:`apply_lora` (a PEFT model)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _merged_tensors(base: nn.Module) -> tuple[dict[str, Tensor], set[str]]:
    """Merged weights of ``base``'s LoRA layers under their original names, and the prefixes of the
    LoRA layers' own state keys (``<layer>.``)."""
    from peft.tuners.lora import LoraLayer

    merged: dict[str, Tensor] = {}
    prefixes: set[str] = set()
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        prefixes.add(f"{name}.")
        layer: Any = module
        weight = layer.get_base_layer().weight.detach()
        if _ADAPTER in layer.lora_A and not layer.merged:
            merged[f"{name}.weight"] = merged_weight(weight, layer.lora_A[_ADAPTER].weight.detach(),
                                                     layer.lora_B[_ADAPTER].weight.detach(), layer.scaling[_ADAPTER])
        else:
            merged[f"{name}.weight"] = weight
    return merged, prefixes


def rollout_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The weights the rollout engine gets, on the CPU, under the base model's parameter names.

    A plain model: its state dict. A LoRA model: the base model's state dict with every adapter
    merged (``W + alpha / rank * B @ A``, new tensors; the model itself is not changed) and the
    adapter tensors left out, so ``vLLM`` / transformers load it like the original checkpoint.
    """
    import torch

    if not is_lora(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    base = model.get_base_model()  # type: ignore[operator]  # PeftModel.get_base_model; nn.Module types it loosely
    with torch.no_grad():
        merged, prefixes = _merged_tensors(base)
    out: dict[str, Tensor] = {}
    for key, value in base.state_dict().items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            out[key] = value.detach().cpu()
        elif key.startswith(f"{prefix}base_layer."):
            rest = key[len(f"{prefix}base_layer."):]
            out[f"{prefix}{rest}"] = (merged[f"{prefix}weight"] if rest == "weight" else value.detach()).cpu()
    return out


# -- checkpoints -------------------------------------------------------------------------------------
def save_lora_actor(folder: Path, actor: nn.Module) -> None:
    """Write the actor of a LoRA checkpoint: ``actor_adapter/`` (the PEFT adapter: what resuming loads)
    and ``actor/`` (the merged full model, for ``steppo eval --model <checkpoint>/actor`` and serving)."""
    actor.save_pretrained(folder / ADAPTER_DIR)  # type: ignore[operator]  # PeftModel.save_pretrained: the adapter only
    base = actor.get_base_model()  # type: ignore[operator]  # see rollout_state_dict
    base.save_pretrained(folder / "actor", state_dict=rollout_state_dict(actor))


def load_lora_actor(folder: Path, actor: nn.Module) -> None:
    """Load the adapter of a LoRA checkpoint (``actor_adapter/``) into ``actor`` in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = folder / ADAPTER_DIR / "adapter_model.safetensors"
    if not file.exists():
        raise ConfigError(f"checkpoint {folder} has no LoRA adapter ({file.name}): it was trained without LoRA; "
                          "resume with lora.rank=0, or start a new output_dir.")
    result: Any = set_peft_model_state_dict(actor, load_file(str(file)))  # torch's _IncompatibleKeys
    expected = {k for k, p in actor.named_parameters() if p.requires_grad}
    missing = [k for k in result.missing_keys if k in expected]
    if missing or result.unexpected_keys:
        raise ConfigError(f"the LoRA adapter in {folder} does not match lora.* of this run (missing {missing[:3]}, "
                          f"unexpected {list(result.unexpected_keys)[:3]}): resume with the run's lora settings.")


def critic_state_dict(critic: nn.Module) -> dict[str, Tensor]:
    """What a checkpoint keeps of the critic: everything without LoRA; with LoRA only the trained
    tensors (adapters and value head), not a copy of the frozen base."""
    if not any(is_lora(m) for m in critic.children()):
        return critic.state_dict()
    trained = {k for k, p in critic.named_parameters() if p.requires_grad}
    return {k: v for k, v in critic.state_dict().items() if k in trained}


def load_critic_state(critic: nn.Module, state: dict[str, Tensor]) -> None:
    """Load :func:`critic_state_dict`'s output into ``critic`` (a LoRA critic: its trained tensors)."""
    if not any(is_lora(m) for m in critic.children()):
        critic.load_state_dict(state)
        return
    trained = {k for k, p in critic.named_parameters() if p.requires_grad}
    if set(state) != trained:
        raise ConfigError(f"the critic checkpoint does not match lora.* of this run "
                          f"({sorted(set(state) ^ trained)[:3]} differ): resume with the run's lora settings.")
    critic.load_state_dict(state, strict=False)
