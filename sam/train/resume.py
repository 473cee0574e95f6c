"""Stage checkpoints: what a stage saves (trainable weights, optimizer, schedule, every rank's RNG state,
data position), how it resumes from one, and the published `final/` directory of a finished stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from sam.checkpoint import publish_dir, save_checkpoint
from sam.config import ExperimentConfig, StageConfig, to_dict
from sam.train.data import StreamSampler
from sam.train.distributed import Dist, fsdp_unshard_into, full_optimizer_state
from sam.train.rng import rng_state


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # Frozen parameters equal the stage's starting weights (the previous stage's final), so a
    # checkpoint only needs what trains plus buffers.
    params = dict(module.named_parameters(remove_duplicate=False))  # tied weights under every name
    keep = {n for n, p in params.items() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k in keep or k not in params}


def save_stage_checkpoint(
    module,
    opt,
    sched,
    step: int,
    sampler: StreamSampler,
    stage: StageConfig,
    summary: dict,
    ckpt_dir: Path,
    dist: Dist,
    shard: nn.Module | None = None,
) -> None:
    if shard is not None:  # FSDP: every process gathers; rank 0 writes the same full state as one process would
        fsdp_unshard_into(shard, module)
        full_optimizer = full_optimizer_state(opt)
    rngs: list[Any] = [rng_state()]
    if dist.world_size > 1:
        rngs = [None] * dist.world_size
        tdist.all_gather_object(rngs, rng_state())
    if dist.is_main:
        state = {
            "step": step,
            "stage": stage.name,
            "module": trainable_state(module),
            "optimizer": full_optimizer if shard is not None else opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": rngs,
            "data": sampler.position(step * stage.grad_accum),
            "probe_loss_start": summary["probe_loss_start"],
        }
        save_checkpoint(ckpt_dir, step, state)
    dist.barrier()


def restore_weights(module: nn.Module, state: dict[str, Any], dist: Dist) -> None:
    """A checkpoint's weights into `module` (its optimizer and schedule are restored by the caller)."""
    missing = set(state["module"]) - set(module.state_dict())
    if missing:
        raise RuntimeError(f"checkpoint of stage {state.get('stage')} holds unknown weights, e.g. {sorted(missing)[0]}")
    module.load_state_dict(state["module"], strict=False)
    if len(state["rng"]) != dist.world_size:
        raise RuntimeError(
            f"checkpoint was written by {len(state['rng'])} processes; resume it with the same number (now {dist.world_size})"
        )


def publish_final(model: nn.Module, encoder_module: nn.Module | None, stage_dir: Path, summary: dict, exp: ExperimentConfig) -> None:
    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if encoder_module is not None:
            torch.save({"classes": encoder_module.classes, "head": encoder_module.head.state_dict()}, tmp / "encoder_head.pt")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmp / "experiment.json").write_text(json.dumps(to_dict(exp), indent=2))

    publish_dir(stage_dir / "final", build)
