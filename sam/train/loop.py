"""One curriculum stage of SAM training: optimizer, schedule, loop, checkpoints, resume, DDP / FSDP.

`train_stage` trains a `SAM` (or, for an encoder-pretraining stage, the audio tower plus a linear
multi-label head; for an LM-pretraining stage, the language model alone as a causal LM on the
training split's prompt + answer text, no audio) for `StageConfig.steps` optimizer steps on the
stage's task mixture:
AdamW (fused on CUDA), linear warmup then cosine decay to `min_lr_ratio` (LambdaLR), gradient
accumulation, gradient clipping, bf16 autocast on CUDA. Every step's loss is the exact mean over
the global batch (response tokens, text tokens, or clips for the head), whatever the number of processes or
accumulation steps, so two ranks under torchrun reproduce one process at the same global batch.

Data order is a pure function of (seed, stage, position): each epoch is a seeded permutation and a
micro-batch is a slice of that stream, so resuming needs only the step counter. A checkpoint holds
the trainable weights, optimizer, scheduler, every rank's RNG state and the data position; resuming
from it continues bit for bit on CPU. The run cache and stage chaining live in `sam.train.runs`.

This module must never change weights outside the stage's trainable groups, never write a
checkpoint non-atomically, and never draw from the global RNG for data order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sam.checkpoint import cleanup_tmp, load_latest
from sam.config import ExperimentConfig, StageConfig, TrainConfig, is_encoder_stage, is_lm_stage
from sam.model.mamba2 import set_ssd_chunk_size
from sam.train.data import (
    StageData,
    StreamSampler,
    WithLabelPositions,
    fixed_batches,
    make_loader,
)
from sam.train.distributed import (
    Dist,
    ddp_kwargs,
    fsdp_shard,
    fsdp_unshard_into,
    restore_sharded_optimizer,
)
from sam.train.heads import (
    EncoderClassifier,
    TextLM,
    audio_lm_tokens,
    check_stages,
    class_vocabulary,
    lm_tokens,
    patch_tokens,
)
from sam.train.logs import StageLog, progress_bar
from sam.train.resume import publish_final, restore_weights, save_stage_checkpoint
from sam.train.rng import seed_all, set_rng_state, stage_seed
from sam.train.speed import CudaGraphs, check_compile, compile_blocks, uncompile_blocks
from sam.train.step import make_optimizer, mean_loss, train_step, trainable_params

VALID_BATCHES = 4  # stage-end validation loss: the first this many eval batches of the split


def train_stage(
    model: nn.Module,
    exp: ExperimentConfig,
    stage_index: int,
    data: StageData,
    stage_dir: Path,
    dist: Dist,
    progress: bool = True,
) -> dict[str, Any]:
    """Train stage `stage_index` of `exp.train.stages` in place on `model`, resuming from the
    newest checkpoint in `stage_dir/checkpoints`; publish `stage_dir/final` (a SAM checkpoint dir)
    and return the stage summary (also written to `final/summary.json`).

    The order of the steps below is part of the contract: every random draw (head initialization,
    dropout, data order) happens after `seed_all` and, on resume, after the restored generators."""
    train, stage = exp.train, exp.train.stages[stage_index]
    check_stages(train)
    check_compile(train, dist.device, dist.world_size)
    device, precision, seed = dist.device, train.precision, stage_seed(train, stage_index)
    encoder_stage = is_encoder_stage(stage)
    ckpt_dir = stage_dir / "checkpoints"
    if dist.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        cleanup_tmp(stage_dir)
        cleanup_tmp(ckpt_dir)
    seed_all(seed)

    # 1. What trains: the stage's module, its batches and what a step counts.
    module, data, count_tokens = stage_module(model, stage, data, device)
    set_ssd_chunk_size(module, train.ssd_chunk_size)
    trainable_params(module, stage)  # refuse a stage that trains nothing before any work

    # 2. Resume: the weights now; the optimizer once it is built, over what trains (below).
    start, state = 0, load_latest(ckpt_dir, map_location="cpu")
    if state is not None:
        restore_weights(module, state, dist)
        start = int(state["step"])
    log = StageLog(stage_dir, stage.name, start, dist.is_main)
    probe = fixed_batches(data, data.train, stage.batch_size, train.eval_batch_size)
    summary: dict[str, Any] = {"stage": stage.name, "index": stage_index, "steps": stage.steps}
    summary["probe_loss_start"] = state["probe_loss_start"] if state else mean_loss(module, probe, encoder_stage, device, precision)

    # 3. Processes, optimizer, data stream.
    net, shard = wrap_for_processes(module, train.fsdp, dist)
    opt, sched, trainable = build_optimizer(module if shard is None else shard, stage, train, device, state, sharded=shard is not None)
    sampler = StreamSampler(len(data.train), stage.batch_size, seed, start * stage.grad_accum, dist.rank, dist.world_size)
    loader = iter(make_loader(data, data.train, sampler, exp.data.num_workers, seed, pin=device.type == "cuda"))
    if state is not None:
        # Last, so nothing above (probe batches, DDP setup) can shift the restored generators.
        set_rng_state(state["rng"][dist.rank])

    # 4. Speed options, then the steps.
    compiled = compile_blocks(module, device) if train.compile else []
    # CUDA graphs: one process, and not the encoder stage (its targets are built on the host in forward).
    use_graphs = train.cuda_graphs and device.type == "cuda" and dist.world_size == 1 and not encoder_stage
    graphs = CudaGraphs(module, trainable, train, device) if use_graphs else None
    what = f"{stage.name} ({stage_index + 1} of {len(train.stages)} stages)"
    bar = progress_bar(what, start, stage.steps, progress and dist.is_main, stage_dir / "progress.log" if dist.is_main else None)
    t0, loss_value, seen_clips, seen_tokens = time.perf_counter(), float("nan"), 0, 0
    for step in range(start, stage.steps):
        micro = [next(loader) for _ in range(stage.grad_accum)]
        loss_value, grad_norm, tokens = train_step(net, micro, opt, sched, trainable, train, dist, encoder_stage, count_tokens, graphs)
        clips = stage.batch_size * stage.grad_accum
        elapsed = time.perf_counter() - t0
        seen_clips += clips
        seen_tokens += tokens
        row = {
            "step": step + 1,
            "loss": loss_value,
            "lr": sched.get_last_lr()[0],
            "grad_norm": grad_norm,
            "clips": clips,
            "tokens": tokens,
            "elapsed_s": elapsed,
            "clips_per_s": seen_clips / elapsed,
            "tokens_per_s": seen_tokens / elapsed,
        }
        if train.log_every and ((step + 1) % train.log_every == 0 or step + 1 == stage.steps):
            log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{row['lr']:.2e}")
        if train.checkpoint_every and (step + 1) % train.checkpoint_every == 0 and step + 1 < stage.steps:
            save_stage_checkpoint(module, opt, sched, step + 1, sampler, stage, summary, ckpt_dir, dist, shard)
    bar.close()

    # 5. Undo the speed options and sharding: `model` holds the trained weights, whole, on every process.
    del graphs  # frees the graphs' memory pool
    if compiled:  # the next stage trains other parameters: its blocks compile afresh
        uncompile_blocks(compiled)
        torch._dynamo.reset()
    if shard is not None:
        fsdp_unshard_into(shard, module)
        module.to(device)
        del net, shard, opt, trainable

    # 6. Summary and the published stage.
    summary["final_loss"] = loss_value
    summary["probe_loss_end"] = mean_loss(module, probe, encoder_stage, device, precision)
    if data.valid and dist.is_main:
        # A fixed slice of the validation split keeps this cheap at every stage end.
        valid = fixed_batches(data, data.valid, train.eval_batch_size, VALID_BATCHES * train.eval_batch_size)
        summary["valid_loss"] = mean_loss(module, valid, encoder_stage, device, precision)
    set_ssd_chunk_size(module, 0)
    if encoder_stage:
        summary["classes"] = module.classes
    log.write({"step": stage.steps, **{k: v for k, v in summary.items() if k not in ("classes", "steps")}})
    if dist.is_main:
        publish_final(model, module if encoder_stage else None, stage_dir, summary, exp)
    dist.barrier()
    if encoder_stage:
        model.set_trainable([])
    return summary


def stage_module(
    model: nn.Module, stage: StageConfig, data: StageData, device: torch.device
) -> tuple[nn.Module, StageData, Callable[[dict[str, Any], torch.Tensor, int], int]]:
    """The module a stage trains (in train mode), its data, and its token counter.

    Encoder stage: the audio tower + a fresh multi-label head (drawn from the stage's seed). LM stage: the
    language model alone as a causal LM on text. Other stages: SAM itself, whose batches carry
    `label_positions` so that its LM head and loss run only where labels count."""
    if is_encoder_stage(stage):
        model.set_trainable(["encoder"] if "encoder" in stage.trainable else [])
        enc = model.config.encoder
        module: nn.Module = EncoderClassifier(
            model.audio_tower, model.audio_tower.embed_dim, class_vocabulary(data.train), enc.pretrain_freq_mask, enc.pretrain_time_mask
        ).to(device)
        count_tokens = patch_tokens(model.audio_tower)
    elif is_lm_stage(stage):
        model.set_trainable(["lm"])
        module, count_tokens = TextLM(model.language_model), lm_tokens
    else:
        model.set_trainable(list(stage.trainable))
        module, count_tokens = model, audio_lm_tokens(model)
        data = dataclasses.replace(data, collate=WithLabelPositions(data.collate))
    module.train()
    return module, data, count_tokens


def wrap_for_processes(module: nn.Module, fsdp: bool, dist: Dist) -> tuple[nn.Module, nn.Module | None]:
    """(what the step calls, the FSDP-sharded copy or None): the module itself in one process, DDP
    around it under torchrun, or a sharded copy with `train.fsdp`."""
    if fsdp and dist.world_size > 1:
        shard = fsdp_shard(module, dist)
        return shard, shard
    if dist.world_size > 1:
        device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True, **ddp_kwargs()), None
    return module, None


def build_optimizer(
    trains: nn.Module, stage: StageConfig, train: TrainConfig, device: torch.device, state: dict[str, Any] | None, sharded: bool
) -> tuple[torch.optim.Optimizer, Any, list[nn.Parameter]]:
    """One optimizer and schedule over the parameters that train (FSDP's shards, else the module's own,
    which DDP shares), restored from a checkpoint `state` when resuming; and those parameters."""
    opt, sched = make_optimizer(trains, stage, train, device)
    trainable = trainable_params(trains, stage)
    if state is not None:
        if sharded:
            restore_sharded_optimizer(opt, sched, state)
        else:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
    return opt, sched, trainable
