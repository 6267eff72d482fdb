"""Training across processes with torch's own wrappers: ``parallel = none | ddp | fsdp``.

* ``none``: one process, plain modules (the default).
* ``ddp``: :class:`torch.nn.parallel.DistributedDataParallel`: every rank holds the whole actor,
  critic and optimizer state; gradients are all-reduced in buckets during the backward pass.
* ``fsdp``: FSDP2 (:func:`torch.distributed.fsdp.fully_shard`), applied to every decoder block and
  then to the root: each rank holds ``1/world`` of every parameter, gradient and AdamW moment; a
  block's full weights exist only while it runs (all-gathered before its forward and backward).

Under ``torchrun`` every rank works through its share of each minibatch's micro-batches
(:func:`rank_share`); all ranks run the same number of backward passes (the shorter ones add a
zero-weight pass), and only the last one synchronises gradients (:func:`gradient_sync`). The
trainer's micro-batch losses are weighted with the *global* minibatch size, so the gradient it wants
is the **sum** over ranks; DDP and FSDP average, so the trainer scales each loss by ``world``
(``mean_r(world * g_r) = sum_r g_r``; a multiplication by a power of two, exact in floating point
for two ranks).

Full weights are built only where they are needed (:func:`full_model_state`): pushing them to the
rollout engine and writing checkpoints, which keep today's format (an HF folder + ``torch.save`` of
``state_dict()``s), so a run resumes under any ``parallel`` mode.

Forward passes must go through the wrapper (DDP and FSDP hook the wrapped module's ``forward``), but
:func:`~steppo_train.models.response_token_stats` runs the actor's decoder and applies its LM head
itself. :class:`CausalLMView` is a causal LM whose ``get_decoder()`` runs the decoder through the
wrapper; the LM head is used inside the same forward/backward, so DDP's gradient hooks and FSDP's
unsharded root weights cover it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn

from steppo_envs.config import ConfigError

__all__ = ["CausalLMView", "ParallelMode", "Parallelism", "any_rank", "check_launch", "full_model_state",
           "clip_gradients", "full_optimizer_state", "gradient_sync", "is_sharded", "load_model_state", "load_optimizer_state",
           "local_bytes", "local_device", "join_group", "leave_group", "rank_share", "wrap_actor", "wrap_critic"]

ParallelMode = Literal["none", "ddp", "fsdp"]
_T = TypeVar("_T")


@dataclass
class Parallelism:
    """This process's place in the run, and the modules forward passes call.

    ``actor`` / ``critic`` are what forward passes call (the model itself, or its DDP / FSDP view);
    ``roots`` are the DDP / FSDP roots whose gradient sync :func:`gradient_sync` switches; ``pushes``
    is true on every rank when some rank holds a rollout policy (the gather of the weights to push is
    then a collective every rank joins)."""

    mode: ParallelMode = "none"
    rank: int = 0
    world: int = 1
    owns_group: bool = False
    actor: nn.Module | None = None
    critic: nn.Module | None = None
    roots: list[nn.Module] = field(default_factory=list)
    pushes: bool = False

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp"


# -- the process group --------------------------------------------------------------------------------
def check_launch(mode: ParallelMode, world: int) -> None:
    """Refuse ``parallel=none`` when torchrun started several processes: each would train its own copy
    on the same data. (Not silently taken as ``ddp``: a run meant to shard a model that does not fit one
    process would then replicate it and run out of memory far from the cause.)"""
    if world > 1 and mode == "none":
        raise ConfigError(f"parallel=none trains in one process, but torchrun started {world} (WORLD_SIZE): pass "
                          "--set parallel=ddp (every rank holds the whole model) or parallel=fsdp (sharded).")


def local_device() -> torch.device:
    """This rank's device: the CUDA device ``LOCAL_RANK`` (made current, as NCCL wants) or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def join_group(mode: ParallelMode) -> Parallelism:
    """Join (or start) the process group for ``mode``: NCCL on CUDA, gloo on the CPU. Under torchrun
    the group comes from its environment; a single process with ``ddp`` / ``fsdp`` gets a one-rank group
    in memory. A group that already exists (the caller's) is used as it is and left to its owner."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_launch(mode, world)
    if mode == "none":
        return Parallelism(mode)
    if dist.is_initialized():
        return Parallelism(mode, dist.get_rank(), dist.get_world_size())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Parallelism(mode, dist.get_rank(), dist.get_world_size(), owns_group=True)


def leave_group(par: Parallelism) -> None:
    """Wait for every rank, then close the process group if :func:`join_group` opened it."""
    if par.mode == "none":
        return
    dist.barrier()
    if par.owns_group:
        dist.destroy_process_group()


def any_rank(par: Parallelism, flag: bool) -> bool:
    """Whether ``flag`` holds on some rank (a collective: every rank calls it)."""
    if par.mode == "none" or par.world == 1:
        return flag
    box = torch.tensor([int(flag)])
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


# -- wrapping -----------------------------------------------------------------------------------------
class CausalLMView(nn.Module):
    """A causal LM as :func:`~steppo_train.models.response_token_stats` sees it, with its decoder run
    through a DDP / FSDP wrapper: ``get_decoder()`` returns ``decoder_call`` (the wrapper's
    ``__call__``, whose forward is this module's: the LM's decoder), ``get_output_embeddings()`` the LM
    head, ``config`` the LM's config. The view's parameters are the LM's (prefixed ``lm.``)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.decoder_call: Callable[..., Any] = self.__call__

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, use_cache: bool = False) -> Any:
        return self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)  # type: ignore[operator]  # PreTrainedModel.get_decoder; nn.Module's __getattr__ types it as Tensor | Module

    def get_decoder(self) -> Callable[..., Any]:
        return self.decoder_call

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()  # type: ignore[operator]  # as in forward


def _blocks(decoder: object) -> list[nn.Module]:
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"parallel=fsdp shards a decoder's `.layers` blocks; {type(decoder).__name__} has none: "
                          "use --set parallel=ddp for this model.")
    return list(layers)


def _fully_shard(blocks: Sequence[nn.Module], root: nn.Module, bf16: bool) -> None:
    """FSDP2: each block its own unit (all-gathered only while it runs), then ``root`` (the rest:
    embeddings, final norm, heads). ``bf16``: all-gather and compute in bfloat16, reduce gradients in
    float32 (``MixedPrecisionPolicy``); the float32 shards stay the optimizer's."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(root.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(root, mesh=mesh, mp_policy=mp)


def _ddp(module: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    # buffers (rotary tables) are the same on every rank: no broadcast before each forward
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def wrap_actor(par: Parallelism, actor: nn.Module, bf16: bool) -> None:
    """Set ``par.actor`` to what forward passes of ``actor`` (an HF causal LM) call. ``fsdp`` shards
    ``actor`` in place (its parameters become ``DTensor`` shards); ``ddp`` leaves it as it is."""
    if par.mode == "none":
        par.actor = actor
        return
    view = CausalLMView(actor)
    if par.mode == "ddp":
        wrapper = _ddp(view)
        view.decoder_call = wrapper.__call__
    else:
        _fully_shard(_blocks(actor.get_decoder()), view, bf16)  # type: ignore[operator]  # as in CausalLMView.forward
        wrapper = view
    par.actor = view
    par.roots.append(wrapper)


def wrap_critic(par: Parallelism, critic: nn.Module | None, bf16: bool) -> None:
    """Set ``par.critic`` to what forward passes of ``critic`` (a :class:`~steppo_train.models.Critic`)
    call: the critic, its DDP wrapper, or the critic sharded in place (``fsdp``)."""
    if critic is None or par.mode == "none":
        par.critic = critic
        return
    if par.mode == "ddp":
        par.critic = _ddp(critic)
    else:
        _fully_shard(_blocks(critic.backbone), critic, bf16)
        par.critic = critic
    par.roots.append(par.critic)


# -- micro-batches -----------------------------------------------------------------------------------
def rank_share(packs: Sequence[_T], rank: int, world: int) -> tuple[list[_T], int]:
    """This rank's micro-batches ``packs[rank::world]`` and the number of backward passes every rank
    runs, ``ceil(len(packs) / world)`` (a rank with fewer adds zero-weight passes, so the collectives
    of DDP / FSDP line up)."""
    return list(packs[rank::world]), -(-len(packs) // world)


@contextmanager
def gradient_sync(roots: Sequence[nn.Module], enabled: bool) -> Iterator[None]:
    """Around one micro-batch's forward and backward: reduce gradients across ranks only when
    ``enabled`` (the last micro-batch of a minibatch); otherwise they accumulate locally (DDP's
    ``no_sync()``, FSDP2's ``set_requires_gradient_sync(False)``: unsharded until the last one)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    with ExitStack() as stack:
        for root in roots:
            if isinstance(root, DistributedDataParallel) and not enabled:
                stack.enter_context(root.no_sync())
            elif isinstance(root, FSDPModule):
                root.set_requires_gradient_sync(enabled)
        yield


# -- full weights and optimizer state -----------------------------------------------------------------
def is_sharded(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are FSDP shards (``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def _is_writer() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s full state dict on the CPU, the keys and shapes of the unsharded module's. Sharded:
    a collective (every rank calls it; rank 0 gets the tensors, the others ``{}``)."""
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast(dict[str, torch.Tensor], state)
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load a full state dict into ``module`` (each rank keeps its shards when sharded); returns
    ``(missing, unexpected)`` keys as ``load_state_dict(strict=False)`` does."""
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        result = set_model_state_dict(module, cast(dict[str, Any], state), options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        result = module.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered to its full shape on the CPU: the
    format of an unsharded optimizer. A collective when sharded (every rank calls it, in the same
    order); rank 0 gets the state, the others ``{}``."""
    from torch.distributed.tensor import DTensor

    saved = optimizer.state_dict()
    sharded = any(isinstance(v, DTensor) for st in saved["state"].values() for v in st.values())
    if not sharded:
        return saved if _is_writer() else {}
    state: dict[int, dict[str, Any]] = {}
    for pid in sorted(saved["state"]):
        state[pid] = {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v for k, v in saved["state"][pid].items()}
    return {"state": state, "param_groups": saved["param_groups"]} if _is_writer() else {}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a full optimizer state (:func:`full_optimizer_state`'s format) into ``optimizer``; the
    state of a sharded parameter is cut to this rank's shard (``distribute_tensor``, a collective)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in saved["state"].items():
        p = params[int(pid)]
        state[pid] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                      if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape else v
                      for k, v in entry.items()}
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def local_bytes(params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes this rank holds of ``params`` and their optimizer state: ``sum numel * element_size`` of
    the local shards (a ``DTensor``'s ``to_local()``, a plain tensor as it is)."""
    from torch.distributed.tensor import DTensor

    def size(t: torch.Tensor) -> int:
        local = t.to_local() if isinstance(t, DTensor) else t
        return int(local.numel() * local.element_size())

    states = optimizer.state.values() if optimizer is not None else []
    tensors = list(params) + [v for st in states for v in st.values() if isinstance(v, torch.Tensor)]
    return sum(size(t) for t in tensors)


def clip_gradients(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """``clip_grad_norm_`` over ``params`` (sharded or not); returns the global gradient norm (over all
    ranks' shards: FSDP's DTensor norm is reduced across the mesh)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
