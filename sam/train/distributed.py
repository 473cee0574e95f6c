"""Processes and devices: the torchrun process group, DDP options, FSDP2 sharding and the sharded optimizer state.

`fsdp_shard` trains a sharded copy of a module and `fsdp_unshard_into` copies its trained weights back, so
checkpoints and the run cache see the same full state dicts as without FSDP.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sam.config import ConfigError
from sam.model.connector import Connector
from sam.model.encoder import Block as EncoderBlock
from sam.model.lm import Block as LMBlock

# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class Dist:
    """Where this process runs: rank among `world_size` torchrun processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()


def init_distributed(device: str | None = None) -> Dist:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {want!r} requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device(want))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = want.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local, torch.device(f"cuda:{local}") if cuda else torch.device("cpu"))


def all_sum(x: float, dist: Dist, device: torch.device) -> float:
    if dist.world_size == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return float(t.item())


def ddp_kwargs() -> dict[str, bool]:
    """DDP's switch for not broadcasting buffers before each forward (every process holds the same
    buffers already): `forward_sync_buffers` where torch has it (it deprecates `broadcast_buffers`)."""
    import inspect

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


# --------------------------------------------------------------------------------------------
# FSDP (`train.fsdp` under torchrun)


def blocks(module: nn.Module, connector: bool = False) -> Iterator[nn.Module]:
    """Every encoder block and Mamba-2 block inside `module` (and each connector, if asked), in
    `module.modules()` order: the repeated units that `compile_blocks` compiles and `fsdp_shard`
    shards one by one."""
    kinds: tuple[type, ...] = (EncoderBlock, LMBlock, Connector) if connector else (EncoderBlock, LMBlock)
    return (m for m in module.modules() if isinstance(m, kinds))


def is_fsdp(net: nn.Module) -> bool:
    if not tdist.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(net, FSDPModule)


def fsdp_shard(module: nn.Module, dist: Dist) -> nn.Module:
    """A copy of `module` sharded with FSDP2 over all `dist` processes: `fully_shard` on every
    encoder block and Mamba-2 block, then on the root (embeddings, connector, norms, heads). Each
    process keeps 1/world_size of every parameter, its gradient and (once the optimizer is built
    on the copy) its AdamW states; a block's full parameters exist only during its forward and
    backward. Frozen parameters and LoRA mix freely inside a block (FSDP2 reduces only parameters
    that have gradients). Gradients are averaged over processes like DDP's, so a step equals DDP's
    and one process's up to float summation order.

    `module` itself stays whole, moved to the CPU while the copy trains (`fsdp_unshard_into` copies
    the trained weights back into it); the sharded copy never leaves the stage, so checkpoints,
    the run cache and `SAM.from_pretrained` see the same full state dicts as without FSDP.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    module.to("cpu")
    # The copy stays on the CPU: `fully_shard` moves each block's tensors to the mesh's device as it
    # shards that block, so the device never holds more than one whole block, and a model larger
    # than one device can be sharded over several.
    shard = copy.deepcopy(module)
    for m in blocks(shard):
        fully_shard(m, mesh=mesh)
    fully_shard(shard, mesh=mesh)
    return shard


@torch.no_grad()
def fsdp_unshard_into(shard: nn.Module, module: nn.Module) -> None:
    """Copy the trainable parameters and the buffers of `fsdp_shard`'s copy into `module`, whole,
    on every process (a collective: every process calls it). Frozen parameters never change."""
    params, buffers = dict(module.named_parameters()), dict(module.named_buffers())
    for name, p in shard.named_parameters():
        if p.requires_grad:
            params[name].copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)
    for name, b in shard.named_buffers():
        buffers[name].copy_(b)


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """`opt.state_dict()` with every sharded state gathered whole, on the CPU: the dict one process
    would save (parameters numbered in the same order). A collective."""
    sd = opt.state_dict()
    full = {}
    for i in sorted(sd["state"]):  # the same order on every process
        full[i] = {k: v.full_tensor().cpu() if hasattr(v, "full_tensor") else v for k, v in sd["state"][i].items()}
    return {**sd, "state": full}


def restore_sharded_optimizer(opt: torch.optim.Optimizer, sched: Any, state: dict[str, Any]) -> None:
    """Load a whole optimizer state (`full_optimizer_state`'s, or one process's) into an optimizer
    over FSDP shards: each process keeps its own slice of every parameter-shaped state."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    opt.load_state_dict(state["optimizer"])  # whole tensors, on each parameter's device
    for group in opt.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            for k, v in opt.state[p].items():
                if torch.is_tensor(v) and not isinstance(v, DTensor) and v.shape == p.shape:
                    # Every process read the same file: slice locally, as fully_shard sliced `p`.
                    opt.state[p][k] = distribute_tensor(v, p.device_mesh, p.placements, src_data_rank=None)
    sched.load_state_dict(state["scheduler"])
