"""One optimizer step: AdamW with warmup + cosine schedule, exact global-mean loss over accumulation
micro-batches and processes, gradient clipping, and the unit-weighted evaluation loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sam.config import ConfigError, StageConfig, TrainConfig
from sam.train.distributed import Dist, all_sum, is_fsdp
from sam.train.heads import lm_tokens, loss_units
from sam.train.speed import CudaGraphs, autocast


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1 over `warmup` steps, then cosine from 1 to `min_ratio` at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def trainable_params(module: nn.Module, stage: StageConfig) -> list[nn.Parameter]:
    """The parameters of `module` that train (ConfigError if the stage's groups select none)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"stage {stage.name}: trainable groups {stage.trainable} select no parameters")
    return params


def make_optimizer(module: nn.Module, stage: StageConfig, train: TrainConfig, device: torch.device):
    """AdamW over trainable parameters; no weight decay on vectors (norms, biases, A_log, D, dt)."""
    decay, no_decay = [], []
    for p in trainable_params(module, stage):
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.95), fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(stage.warmup_steps, stage.steps, train.min_lr_ratio))
    return opt, sched


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def mean_loss(module: nn.Module, batches: Sequence[dict[str, Any]], encoder_stage: bool, device: torch.device, precision: str) -> float:
    """Unit-weighted mean loss over `batches` in eval mode (no dropout, no RNG draws)."""
    was = module.training
    module.eval()
    total, units = 0.0, 0
    try:
        for b in batches:
            b = to_device(b, device)
            n = loss_units(b, encoder_stage)
            with autocast(device, precision):
                loss, _ = module(b)
            total += float(loss) * n
            units += n
    finally:
        module.train(was)
    return total / max(units, 1)


def train_step(
    net: nn.Module,
    micro: Sequence[dict[str, Any]],
    opt: torch.optim.Optimizer,
    sched: Any,
    trainable: Sequence[torch.nn.Parameter],
    train: TrainConfig,
    dist: Dist,
    encoder_stage: bool,
    count_tokens: Callable[[dict[str, Any], torch.Tensor, int], int] | None = None,
    graphs: CudaGraphs | None = None,
) -> tuple[float, float, int]:
    """One optimizer step over `micro` (this rank's accumulation micro-batches, as the loader gives them).

    Returns (global mean loss, gradient norm before clipping, tokens processed by all ranks).
    `count_tokens(batch, logits, text_tokens)` says how many tokens a micro-batch fed (default: `lm_tokens`).
    With `graphs`, each micro-batch's forward + backward is a CUDA graph replay (one process only).
    """
    device = dist.device
    count_tokens = count_tokens or lm_tokens
    # Counted on the host copies, so that a CUDA step synchronizes only for the logged numbers.
    units = [loss_units(b, encoder_stage) for b in micro]
    if 0 in units:  # a loss over nothing is NaN; SAM.forward skips this check for CUDA tensors
        raise ValueError("batch has no labelled tokens (all labels are IGNORE_INDEX)")
    texts = [int(b["attention_mask"].sum()) if "attention_mask" in b else 0 for b in micro]
    total = all_sum(float(sum(units)), dist, device)
    weighted = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for i, (b, n, text) in enumerate(zip(micro, units, texts)):
        if graphs is not None:
            loss, logits, b = graphs(b, n * dist.world_size / total)
            weighted += loss.double() * n
            tokens += count_tokens(b, logits, text)
            continue
        b = to_device(b, device)
        last = i == len(micro) - 1
        ctx = net.no_sync() if isinstance(net, DistributedDataParallel) and not last else contextlib.nullcontext()
        if is_fsdp(net):  # reduce-scatter the gradients once, after the last micro-batch
            net.set_requires_gradient_sync(last)
        with ctx:
            with autocast(device, train.precision):
                loss, logits = net(b)
            # Weight by this micro-batch's share of the global units (DDP then averages over ranks,
            # hence the world_size factor): the step's loss is the exact global mean.
            (loss * (n * dist.world_size / total)).backward()
        weighted += loss.detach().double() * n
        tokens += count_tokens(b, logits, text)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, train.grad_clip if train.grad_clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
        grad_norm = grad_norm.full_tensor()
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=graphs is None)  # graphs accumulate into the same .grad tensors
    return all_sum(float(weighted), dist, device) / total, float(grad_norm), int(all_sum(float(tokens), dist, device))
