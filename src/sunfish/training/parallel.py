"""Parallelism applied to a built model from outside (the model code knows nothing of it).

Order, as in torchtitan's `parallelize_llama`: activation checkpointing, then `torch.compile` per block,
then data parallelism: DDP (replicated weights, all-reduced gradients) or FSDP2 (`fully_shard` on each
block, then on the root, so one block's full weights exist at a time). Multi-process runs start under
`torchrun`, which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in the environment:

    torchrun --nproc_per_node=2 -m sunfish train --preset nano --train.parallel=fsdp
    torchrun --nnodes=2 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --nproc_per_node=8 \\
        -m sunfish train --preset sunfish-1.4b --train.parallel=fsdp --train.offload=true

Several nodes share one run folder on a shared filesystem, or keep one each with --train.node_local=true
(training/nodes.py; docs/multinode.md).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from sunfish.config import ParallelKind, TrainConfig
from sunfish.model.transformer import Transformer
from sunfish.portable import compiler_missing
from sunfish.runtime import Runtime


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the data-parallel workers."""

    rank: int = 0
    world: int = 1
    kind: ParallelKind = ParallelKind.NONE
    owns_group: bool = False  # this process created the process group (and destroys it at the end)
    local_rank: int = 0  # this process's place on its node (torchrun's LOCAL_RANK)
    node: int = 0  # this node's index (torchrun's GROUP_RANK)
    nodes: int = 1  # nodes in the run (torchrun's GROUP_WORLD_SIZE)
    node_local: bool = False  # each node keeps its own run folder (training/nodes.py); else one folder is shared

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def writes_files(self) -> bool:
        """Whether this rank writes the run folder it sees: rank 0 of a shared folder, or each node's first rank."""
        return self.is_main or (self.node_local and self.local_rank == 0)

    @property
    def separate_folders(self) -> bool:
        """Nodes with folders of their own, which collectives keep in step (training/nodes.py)."""
        return self.node_local and self.nodes > 1

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def init_distributed(kind: ParallelKind, device: torch.device, node_local: bool = False) -> DistInfo:
    """Join the torchrun process group (gloo on CPU, NCCL on CUDA) for ddp/fsdp; check the launch fits the kind.
    Node and local rank come from torchrun's GROUP_RANK / LOCAL_RANK (or SLURM-style RANK // LOCAL_WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if kind is ParallelKind.NONE:
        if world > 1:
            raise ValueError(f"this process is one of {world} torchrun workers but --train.parallel=none; "
                             "pass --train.parallel=ddp or --train.parallel=fsdp")
        return DistInfo()  # node_local (from a multi-node run's saved config) means nothing to one process
    if "RANK" not in os.environ:
        raise ValueError(f"--train.parallel={kind.value} runs under torchrun; start it as "
                         f"`torchrun --nproc_per_node=N -m sunfish train ... --train.parallel={kind.value}`")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return DistInfo(rank=rank, world=world, kind=kind, owns_group=owns,
                    local_rank=int(os.environ.get("LOCAL_RANK", rank % per_node)),
                    node=int(os.environ.get("GROUP_RANK", rank // per_node)),
                    nodes=int(os.environ.get("GROUP_WORLD_SIZE", -(-world // per_node))), node_local=node_local)


def close_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of `value` over all ranks (the value itself in one process)."""
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return float(t) / info.world


def all_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    if not info.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any rank (so all ranks take the same branch)."""
    if not info.active:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def gather_rows(local: torch.Tensor, info: DistInfo, device: torch.device) -> list[torch.Tensor]:
    """Every rank's `local` tensor (same shape on all ranks), in rank order, on the CPU."""
    if not info.active:
        return [local.cpu()]
    local = local.to(_comm_device(device))
    parts = [torch.empty_like(local) for _ in range(info.world)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


class ModelAndLoss(nn.Module):
    """The model and its training loss as one module, so DDP's and FSDP's hooks wrap the whole computation
    (the loss calls `model.hidden` and `model.head`, not `forward`). Returns the scalar loss."""

    def __init__(self, model: Transformer, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn  # (model, x0, generator, curriculum stage or None) -> scalar loss

    def forward(self, x0: torch.Tensor, generator: torch.Generator, stage=None, measure: Callable | None = None) -> torch.Tensor:
        """The loss at curriculum `stage` (None: the final objective); with `measure`, measure(model, x0, generator)
        instead: a figure computed through the wrapper, so FSDP gathers the weights for it."""
        if measure is not None:
            return measure(self.model, x0, generator)
        return self.loss_fn(self.model, x0, generator, stage)


def apply_activation_checkpointing(model: Transformer, every: int) -> int:
    """Recompute the activations of every `every`-th block in the backward pass instead of storing them.

    Uses PyTorch's non-reentrant `checkpoint_wrapper`; state-dict keys stay those of the plain model.
    Returns the number of blocks wrapped.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if every <= 0:
        return 0
    wrapped = 0
    for i, block in enumerate(model.blocks):
        if i % every == 0:
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
            wrapped += 1
    return wrapped


def apply_compile(model: Transformer, log: Callable[[str], None] = print) -> bool:
    """torch.compile each block in place: static (B, L, D) shapes, fused elementwise work.

    The loss's masked output head has a data-dependent shape and stays eager. Inductor needs a C++
    compiler on the CPU and Triton on CUDA (sunfish/portable.py); without them the model stays uncompiled
    (with a one-line note) rather than failing mid-run.
    """
    missing = compiler_missing(next(model.parameters()).device)
    if missing:
        log(f"note: {missing}; training uncompiled (pass --train.compile=false to silence this)")
        return False
    for block in model.blocks:
        block.compile()
    return True


def apply_fsdp(objective: ModelAndLoss, info: DistInfo, rt: Runtime, offload: bool) -> None:
    """FSDP2: shard each block, then the root (embeddings, final norm, head) through the ModelAndLoss.

    On CUDA with bf16 the parameters are gathered in bf16 and gradients reduced in fp32 (the sharded
    fp32 master weights and AdamW state stay fp32). `offload` keeps the shards on the CPU (CPUOffloadPolicy).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(rt.device.type, (info.world,))
    options: dict = {"mesh": mesh}
    if rt.device.type == "cuda" and rt.autocast_dtype is torch.bfloat16:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in objective.model.blocks:
        fully_shard(block, **options)
    fully_shard(objective, **options)


def parallelize(model: Transformer, objective: ModelAndLoss, cfg: TrainConfig, info: DistInfo, rt: Runtime,
                log: Callable[[str], None]) -> nn.Module:
    """Apply activation checkpointing, compile and DDP/FSDP; returns the module to call for the loss."""
    if cfg.offload and cfg.parallel is not ParallelKind.FSDP:
        raise ValueError("--train.offload=true needs --train.parallel=fsdp (offload moves FSDP's shards to the CPU)")
    wrapped = apply_activation_checkpointing(model, cfg.act_ckpt)
    if wrapped:
        log(f"activation checkpointing: {wrapped} of {len(model.blocks)} blocks recompute their activations")
    if cfg.compile:
        apply_compile(model, log)
    if cfg.parallel is ParallelKind.DDP:
        from torch.nn.parallel import DistributedDataParallel

        # a part whose parameters get no gradient in some steps (the learned time warp before it starts) needs DDP's
        # search for unused parameters; without such a part the search is skipped (it costs a graph walk per step)
        unused = any(getattr(m, "sometimes_unused", False) for m in model.modules())
        return DistributedDataParallel(objective, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                       find_unused_parameters=unused)
    if cfg.parallel is ParallelKind.FSDP:
        offload = cfg.offload and rt.device.type != "cpu"
        if cfg.offload and not offload:
            log("note: --train.offload=true has no effect when training on the CPU (the shards are already there)")
        apply_fsdp(objective, info, rt, offload)
    return objective


def reshard(module: nn.Module) -> None:
    """Free FSDP's gathered weights (the root keeps them after a forward pass without backward), so the
    next forward gathers the shards again, e.g. after EMA weights were swapped in and out."""
    for sub in module.modules():
        if hasattr(sub, "reshard") and hasattr(sub, "unshard"):  # an FSDPModule
            sub.reshard()


def gradient_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if hasattr(module, "no_sync") and not sync:
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()
