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
from it continues bit for bit on CPU. The run cache and stage chaining live in `sam.runs`.

This module must never change weights outside the stage's trainable groups, never write a
checkpoint non-atomically, and never draw from the global RNG for data order.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from sam.checkpoint import cleanup_tmp, load_latest, publish_dir, save_checkpoint
from sam.config import ConfigError, ExperimentConfig, StageConfig, TrainConfig, to_dict
from sam.mamba2 import set_ssd_chunk_size
from sam.progress import Progress
from sam.prompt import IGNORE_INDEX, encode_example
from sam.rng import rng_state, seed_all, set_rng_state

# `classifier` is the stage-0 multi-label head on the encoder; the others are `SAM.set_trainable` groups
# (`head` there is the LM's output layer).
VALID_BATCHES = 4  # stage-end validation loss: the first this many eval batches of the split
GROUPS = ("encoder", "connector", "lora", "lm", "head", "classifier")
TEXT_TASK = "text"  # the LM-pretraining stage's only task: the training split's text, without audio


# --------------------------------------------------------------------------------------------
# Processes and devices


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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for precision=auto; explicit bf16 anywhere; fp32 otherwise."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision: expected auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# RNG


def stage_seed(train: TrainConfig, stage_index: int) -> int:
    # Each stage starts from its own seed, so a stage trained after loading its predecessors from
    # the run cache matches one trained straight after them.
    return train.seed * 1009 + stage_index


# --------------------------------------------------------------------------------------------
# Data order


class StreamSampler(Sampler[list[int]]):
    """Yields this rank's share of global micro-batches, starting at micro-batch `start`.

    The stream is epoch 0's permutation, then epoch 1's, ...; each epoch's permutation comes from
    a generator seeded with (seed, epoch). Global micro-batch j is stream positions
    [j*B, (j+1)*B); rank r takes the r-th of `world_size` equal slices of it.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ConfigError("the stage has no training examples (check its tasks and data settings)")
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} is not divisible by the {world_size} torchrun processes")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.rank, self.world_size = rank, world_size
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def position(self, micro_batch: int) -> dict[str, int]:
        """Epoch and offset in that epoch where global micro-batch `micro_batch` starts."""
        pos = micro_batch * self.batch_size
        return {"epoch": pos // self.n, "offset": pos % self.n, "micro_batch": micro_batch}

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch_size // self.world_size
        j = self.start
        while True:
            first = j * self.batch_size + self.rank * local
            yield [int(self._perm(p // self.n)[p % self.n]) for p in range(first, first + local)]
            j += 1

    def __len__(self) -> int:  # an endless stream; DataLoader only needs a number
        return 2**62


# --------------------------------------------------------------------------------------------
# Encoder pretraining head (stage 0)


class EncoderClassifier(nn.Module):
    """Audio tower + linear multi-label head on the mean-pooled patch grid (stands in for EAT's
    AudioSet finetuning). The head is discarded after the stage; the tower is SAM's own module."""

    def __init__(self, audio_tower: nn.Module, dim: int, classes: Sequence[str]):
        super().__init__()
        self.audio_tower = audio_tower
        self.classes = list(classes)
        self.head = nn.Linear(dim, len(self.classes))

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.audio_tower(batch["fbank"])  # [B, T, F, D]
        logits = self.head(grid.mean(dim=(1, 2)))
        target = self.targets(batch["examples"]).to(logits.device)
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), target), logits

    def targets(self, examples: Sequence[Any]) -> torch.Tensor:
        from sam.data.types import label_matrix

        return torch.from_numpy(label_matrix(examples, self.classes)).float()


def is_encoder_stage(stage: StageConfig) -> bool:
    """A stage that trains the multi-label classifier trains the audio tower alone (stage 0)."""
    return "classifier" in stage.trainable


# --------------------------------------------------------------------------------------------
# LM pretraining on text (stands in for a pretrained Mamba-2 checkpoint)


class TextLM(nn.Module):
    """The language model as a plain causal LM: token t predicts token t + 1, loss on every labelled
    target. Wraps SAM's own `language_model`, so what it learns stays in SAM."""

    def __init__(self, language_model: nn.Module):
        super().__init__()
        self.language_model = language_model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # labels[:, 0] is IGNORE_INDEX (nothing precedes it), so the loss counts what `loss_units` counts.
        loss = nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
        )
        return loss, logits


class TextDataset(torch.utils.data.Dataset):
    """Items: prompt + answer + eos token ids of an example (tokenized as SAM's own training does,
    by `encode_example`), labels = the ids with the first position ignored. Never reads audio."""

    def __init__(self, examples: Sequence[Any], tokenizer: Any):
        self.examples, self.tokenizer = list(examples), tokenizer
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        ids = torch.tensor(encode_example(self.tokenizer, ex.instruction, ex.answer)[0], dtype=torch.long)
        labels = ids.clone()
        labels[0] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels, "pad_id": self.pad_id}


def collate_text(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Right-pad ids with the pad id and labels with IGNORE_INDEX; attention_mask 1 on tokens."""
    pad = torch.nn.utils.rnn.pad_sequence
    ids = pad([b["input_ids"] for b in items], batch_first=True, padding_value=items[0]["pad_id"])
    labels = pad([b["labels"] for b in items], batch_first=True, padding_value=IGNORE_INDEX)
    mask = pad([torch.ones_like(b["input_ids"]) for b in items], batch_first=True, padding_value=0)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def is_lm_stage(stage: StageConfig) -> bool:
    """A stage whose task is text trains the language model alone on text (before any audio stage)."""
    return TEXT_TASK in stage.tasks


def check_stages(train: TrainConfig) -> None:
    """Raise ConfigError naming the key of the first impossible stage setting."""
    from sam.data.types import TASKS

    if not train.stages:
        raise ConfigError("train.stages is empty; a run needs at least one stage")
    for i, stage in enumerate(train.stages):
        key = f"train.stages.{i}"
        bad = sorted(set(stage.trainable) - set(GROUPS))
        if bad or not stage.trainable:
            raise ConfigError(f"{key}.trainable: unknown group {bad[0]!r}; choose from {', '.join(GROUPS)}" if bad else f"{key}.trainable is empty")
        other = sorted(set(stage.trainable) - {"encoder", "classifier"})
        if "classifier" in stage.trainable and other:
            raise ConfigError(f"{key}.trainable: a 'classifier' stage trains encoder + classifier only, not {other[0]!r}")
        if is_lm_stage(stage):
            if stage.tasks != [TEXT_TASK] or stage.trainable != ["lm"]:
                raise ConfigError(f"{key}: an LM-pretraining stage has tasks [{TEXT_TASK}] and trainable [lm] only (got {stage.tasks}, {stage.trainable})")
        bad = sorted(set(stage.tasks) - set(TASKS) - ({TEXT_TASK} if is_lm_stage(stage) else set()))
        if bad or not stage.tasks:
            raise ConfigError(f"{key}.tasks: unknown task {bad[0]!r}; choose from {', '.join(TASKS)} (or [{TEXT_TASK}] alone, for LM pretraining)" if bad else f"{key}.tasks is empty")
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(stage, name) <= 0:
                raise ConfigError(f"{key}.{name} must be positive, got {getattr(stage, name)}")
        if stage.lr <= 0 or stage.warmup_steps < 0:
            raise ConfigError(f"{key}: lr must be positive and warmup_steps non-negative (got {stage.lr}, {stage.warmup_steps})")
    if train.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision: expected auto, fp32 or bf16, got {train.precision!r}")
    n = train.ssd_chunk_size
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or (n and (n < 16 or n & (n - 1))):
        raise ConfigError(f"train.ssd_chunk_size must be 0 (the model's own chunk size) or a power of two >= 16, got {n!r}")


def class_vocabulary(examples: Sequence[Any]) -> list[str]:
    classes = sorted({label for ex in examples for label in ex.labels})
    if not classes:
        raise ConfigError("encoder pretraining needs examples with class labels; the stage's examples have none")
    return classes


# --------------------------------------------------------------------------------------------
# Optimizer and schedule


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


# --------------------------------------------------------------------------------------------
# Loss bookkeeping


def loss_units(batch: dict[str, Any], encoder_stage: bool) -> int:
    """What the loss averages over: clips for the head, labelled tokens for the LM (response tokens,
    or every text token but the first in LM pretraining)."""
    if encoder_stage:
        return int(batch["fbank"].shape[0])
    return int((batch["labels"] != IGNORE_INDEX).sum())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _all_sum(x: float, dist: Dist, device: torch.device) -> float:
    if dist.world_size == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return float(t.item())


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


# --------------------------------------------------------------------------------------------
# Logs


class StageLog:
    """Per-step rows appended to log.csv and log.jsonl (rank 0); rows past a resume point are dropped."""

    FIELDS = ["stage", "step", "loss", "lr", "grad_norm", "clips", "tokens", "clips_per_s", "tokens_per_s", "elapsed_s"]

    def __init__(self, folder: Path, stage: str, resume_step: int, enabled: bool):
        self.csv, self.jsonl, self.stage, self.enabled = folder / "log.csv", folder / "log.jsonl", stage, enabled
        if enabled:
            self._truncate(resume_step)

    def _truncate(self, step: int) -> None:
        rows = []
        if self.jsonl.is_file():
            rows = [r for r in (json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()) if r.get("step", 0) <= step]
        with open(self.jsonl, "w") as fj, open(self.csv, "w", newline="") as fc:
            w = csv.DictWriter(fc, fieldnames=self.FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                fj.write(json.dumps(r) + "\n")
                if "loss" in r:
                    w.writerow(r)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"stage": self.stage, **row}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if "loss" in row:
            with open(self.csv, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore").writerow(row)


# --------------------------------------------------------------------------------------------
# The stage loop


@dataclass
class StageData:
    """A stage's examples and how to batch them (dataset + collate from `sam.data.dataset`)."""

    train: list[Any]
    valid: list[Any]
    make_dataset: Any  # examples -> torch Dataset
    collate: Any


def _loader(data: StageData, examples: list[Any], sampler: Sampler, workers: int, seed: int, pin: bool = False) -> DataLoader:
    # A private generator: DataLoader otherwise draws its worker seed from the global RNG, which
    # would shift dropout masks between a fresh run and a resumed one. Pinned batches (CUDA) make
    # the step's non_blocking copy really asynchronous.
    return DataLoader(
        data.make_dataset(examples),
        batch_sampler=sampler,
        collate_fn=data.collate,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        pin_memory=pin,
    )


def _fixed_batches(data: StageData, examples: list[Any], batch_size: int, limit: int) -> list[dict[str, Any]]:
    ds = data.make_dataset(examples[:limit])
    items = [ds[i] for i in range(len(ds))]
    return [data.collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def lm_tokens(batch: dict[str, Any], logits: torch.Tensor, text_tokens: int) -> int:
    """LM positions a batch fed through the model: audio tokens + `text_tokens` (padding excluded)."""
    audio = int(logits.shape[1]) - int(batch["input_ids"].shape[1])
    return text_tokens + int(logits.shape[0]) * audio


def audio_lm_tokens(model: nn.Module) -> Callable[[dict[str, Any], torch.Tensor, int], int]:
    """Counter of LM positions per SAM batch (each clip's audio tokens + `text_tokens`) that does not
    read the logits (which cover only the labelled positions when the batch has label_positions)."""

    def count(batch: dict[str, Any], _logits: torch.Tensor, text_tokens: int) -> int:
        return text_tokens + int(batch["fbank"].shape[0]) * model.num_audio_tokens(int(batch["fbank"].shape[1]))

    return count


class WithLabelPositions:
    """A collate function that adds `label_positions` (sam.model.label_positions of the labels) to
    each batch, so that SAM.forward applies its LM head and loss only there. Computed on the host,
    where the loader builds the batch: the number of positions is a shape (CUDA graphs capture one
    per shape), which the device must not have to report back."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]):
        self.collate = collate

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        from sam.model import label_positions

        batch = self.collate(items)
        batch["label_positions"] = label_positions(batch["labels"])
        return batch


def patch_tokens(audio_tower: nn.Module) -> Callable[[dict[str, Any], torch.Tensor, int], int]:
    """Counter of encoder patch tokens per batch, for the encoder-pretraining stage."""

    def count(batch: dict[str, Any], _logits: torch.Tensor, _text: int) -> int:
        t, f = audio_tower.grid_shape(int(batch["fbank"].shape[1]))
        return int(batch["fbank"].shape[0]) * t * f

    return count


class CudaGraphs:
    """Forward + weighted backward of a micro-batch, captured once per batch shape as a CUDA graph
    and replayed (`train.cuda_graphs`; one CUDA process, LM stages).

    A step of a large model on short sequences is bound by the host launching thousands of small
    kernels (mamba_ssm's SSD backward alone spends milliseconds of Python per layer); a replay
    launches them all at once. Text is right-padded to a multiple of `bucket` tokens (padding is
    masked and unlabelled, so the loss and gradients are those of the unpadded batch) to bound the
    number of shapes, hence graphs; all graphs share one memory pool. Gradients accumulate into
    `.grad` tensors allocated outside the graphs, so the caller must zero them in place
    (`zero_grad(set_to_none=False)`), never free them. The gradients are restored after the warm-up
    runs that precede a capture, so those add nothing to the step.
    """

    def __init__(self, net: nn.Module, trainable: Sequence[torch.nn.Parameter], train: TrainConfig, device: torch.device, bucket: int = 16):
        if device.type != "cuda":
            raise ConfigError("train.cuda_graphs needs a CUDA device")
        self.net, self.trainable, self.train, self.device, self.bucket = net, list(trainable), train, device, bucket
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Size]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _pad(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        tensors = {k: v for k, v in batch.items() if torch.is_tensor(v)}
        width = tensors["input_ids"].shape[1]
        extra = -width % self.bucket
        if extra:
            fill = {"input_ids": 0, "labels": IGNORE_INDEX, "attention_mask": 0}
            for k, value in fill.items():
                if k in tensors:
                    v = tensors[k]
                    tensors[k] = torch.cat([v, v.new_full((v.shape[0], extra), value)], dim=1)
        return tensors

    def _forward_backward(self, static: dict[str, torch.Tensor], weight: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        with autocast(self.device, self.train.precision):
            loss, logits = self.net(static)
        (loss * weight).backward()
        return loss.detach(), logits.shape

    def _capture(self, tensors: dict[str, torch.Tensor]) -> tuple:
        static = {k: v.to(self.device) for k, v in tensors.items()}
        weight = torch.zeros((), device=self.device)
        for p in self.trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        kept = [p.grad.clone() for p in self.trainable]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # autotuning, compilation and allocations happen here, not in the graph
            for _ in range(2):
                self._forward_backward(static, weight)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch._foreach_copy_([p.grad for p in self.trainable], kept)
        del kept
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            loss, shape = self._forward_backward(static, weight)
        return graph, static, weight, loss, shape

    def __call__(self, batch: dict[str, Any], weight: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, a meta tensor of the logits' shape, the padded batch) after accumulating
        `weight` x the gradient of this micro-batch's loss. The loss tensor is overwritten by the
        next replay of the same shape: consume it (on the stream) before then."""
        tensors = self._pad(batch)
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(tensors.items()))
        if key not in self.graphs:
            self.graphs[key] = self._capture(tensors)
        graph, static, w, loss, shape = self.graphs[key]
        for k, v in tensors.items():
            static[k].copy_(v, non_blocking=True)
        w.fill_(weight)
        graph.replay()
        return loss, torch.empty(shape, device="meta"), tensors


def check_compile(train: TrainConfig, device: torch.device, world_size: int) -> None:
    """Refuse `train.compile` where it is not known to give eager's gradients (ConfigError)."""
    if not train.compile:
        return
    if device.type != "cuda" or world_size > 1:
        raise ConfigError("train.compile needs one CUDA process (refused on CPU; compiled blocks under torchrun are not tested)")


def compile_blocks(module: nn.Module, device: torch.device, mode: str | None = None) -> list[nn.Module]:
    """`train.compile`: torch.compile, in place, every encoder block, Mamba-2 block and connector
    inside `module` (regional compilation: the blocks of one stack share a code object, so one
    compilation serves them all). mamba_ssm's Triton kernels stay opaque (`sam.mamba2.opaque_kernels`):
    they run eagerly between the compiled regions. Only `forward` is replaced, as an instance
    attribute; `uncompile_blocks` restores it. CUDA only (the speed it buys is fewer GPU kernels).

    Compiled dropout draws its masks from Inductor's generator, not eager's: the same distribution,
    other masks (CUDA graphs differ from eager the same way); that alone made the compiled LoRA
    gradients differ from eager when this was first measured. Under bf16 autocast with dropout off
    (or `torch._inductor.config.fallback_random`), compiled and eager gradients agree to bf16
    rounding on an H100, and in fp32 to TF32 rounding once `_CausalConvSiLU` returned a fresh tensor
    (before, compiling it gave zero gradients in fp32; tests/test_gpu.py).
    """
    if device.type != "cuda":
        raise ConfigError("train.compile needs a CUDA device (it compiles the blocks for the GPU; on CPU leave it false)")
    from sam.mamba2 import opaque_kernels

    opaque_kernels(True)
    done = []
    for m in blocks(module, connector=True):
        if "forward" not in vars(m):
            m.forward = torch.compile(m.forward, mode=mode)
            done.append(m)
    return done


def uncompile_blocks(modules: Sequence[nn.Module]) -> None:
    """Undo `compile_blocks` on these modules (their plain `forward` again) and hand mamba_ssm's
    kernels back unwrapped (`sam.mamba2.opaque_kernels(False)`): the model runs as before it was
    compiled."""
    from sam.mamba2 import opaque_kernels

    for m in modules:
        vars(m).pop("forward", None)
    opaque_kernels(False)


def blocks(module: nn.Module, connector: bool = False) -> Iterator[nn.Module]:
    """Every encoder block and Mamba-2 block inside `module` (and each connector, if asked), in
    `module.modules()` order: the repeated units that `compile_blocks` compiles and `fsdp_shard`
    shards one by one."""
    from sam.connector import Connector
    from sam.encoder import Block as EncoderBlock
    from sam.lm import Block as LMBlock

    kinds: tuple[type, ...] = (EncoderBlock, LMBlock, Connector) if connector else (EncoderBlock, LMBlock)
    return (m for m in module.modules() if isinstance(m, kinds))


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
    total = _all_sum(float(sum(units)), dist, device)
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
        if _is_fsdp(net):  # reduce-scatter the gradients once, after the last micro-batch
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
    return _all_sum(float(weighted), dist, device) / total, float(grad_norm), int(_all_sum(float(tokens), dist, device))


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
    and return the stage summary (also written to `final/summary.json`)."""
    train, stage = exp.train, exp.train.stages[stage_index]
    check_stages(train)
    device, precision = dist.device, train.precision
    check_compile(train, device, dist.world_size)
    encoder_stage = is_encoder_stage(stage)
    ckpt_dir = stage_dir / "checkpoints"
    if dist.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        cleanup_tmp(stage_dir)
        cleanup_tmp(ckpt_dir)
    seed_all(stage_seed(train, stage_index))

    if encoder_stage:
        model.set_trainable(["encoder"] if "encoder" in stage.trainable else [])
        dim = model.audio_tower.embed_dim
        module: nn.Module = EncoderClassifier(model.audio_tower, dim, class_vocabulary(data.train)).to(device)
    elif is_lm_stage(stage):
        model.set_trainable(["lm"])
        module = TextLM(model.language_model)
    else:
        model.set_trainable(list(stage.trainable))
        module = model
        # The LM head and loss only where labels count (SAM.forward with label_positions).
        data = dataclasses.replace(data, collate=WithLabelPositions(data.collate))
    module.train()
    set_ssd_chunk_size(module, train.ssd_chunk_size)
    count_tokens = patch_tokens(model.audio_tower) if encoder_stage else lm_tokens if is_lm_stage(stage) else audio_lm_tokens(model)
    trainable_params(module, stage)  # refuse a stage that trains nothing before any work

    start, state = 0, load_latest(ckpt_dir, map_location="cpu")
    if state is not None:
        # The weights now; the optimizer once it is built, over what trains (below).
        _restore(module, state, dist)
        start = int(state["step"])
    log = StageLog(stage_dir, stage.name, start, dist.is_main)

    probe = _fixed_batches(data, data.train, stage.batch_size, train.eval_batch_size)
    summary: dict[str, Any] = {"stage": stage.name, "index": stage_index, "steps": stage.steps}
    summary["probe_loss_start"] = state["probe_loss_start"] if state else mean_loss(module, probe, encoder_stage, device, precision)

    net: nn.Module = module
    shard: nn.Module | None = None
    if train.fsdp and dist.world_size > 1:
        shard = net = fsdp_shard(module, dist)
    elif dist.world_size > 1:
        net = DistributedDataParallel(
            module, device_ids=[dist.local_rank] if device.type == "cuda" else None, find_unused_parameters=True, **_no_buffer_sync()
        )
    # One optimizer, over the parameters that train: FSDP's shards, else the module's own (DDP's).
    trains = module if shard is None else shard
    opt, sched = make_optimizer(trains, stage, train, device)
    trainable = trainable_params(trains, stage)
    if state is not None:
        if shard is None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        else:
            _restore_sharded_optimizer(opt, sched, state)
    sampler = StreamSampler(len(data.train), stage.batch_size, stage_seed(train, stage_index), start * stage.grad_accum, dist.rank, dist.world_size)
    loader = iter(_loader(data, data.train, sampler, exp.data.num_workers, stage_seed(train, stage_index), pin=device.type == "cuda"))

    if state is not None:
        # Last, so nothing above (probe batches, DDP setup) can shift the restored generators.
        set_rng_state(state["rng"][dist.rank])
    compiled = compile_blocks(module, device) if train.compile else []
    # CUDA graphs: one process, and not the encoder stage (its targets are built on the host in forward).
    graphs = CudaGraphs(module, trainable, train, device) if train.cuda_graphs and device.type == "cuda" and dist.world_size == 1 and not encoder_stage else None
    what = f"{stage.name} ({stage_index + 1} of {len(train.stages)} stages)"
    bar = _progress(what, start, stage.steps, progress and dist.is_main, stage_dir / "progress.log" if dist.is_main else None)
    t0, loss_value, seen_clips, seen_tokens = time.perf_counter(), float("nan"), 0, 0
    for step in range(start, stage.steps):
        micro = [next(loader) for _ in range(stage.grad_accum)]
        loss_value, grad_norm, tokens = train_step(net, micro, opt, sched, trainable, train, dist, encoder_stage, count_tokens, graphs)
        clips = stage.batch_size * stage.grad_accum
        elapsed = time.perf_counter() - t0
        seen_clips += clips
        seen_tokens += tokens
        row = {
            "step": step + 1, "loss": loss_value, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm,
            "clips": clips, "tokens": tokens, "elapsed_s": elapsed,
            "clips_per_s": seen_clips / elapsed, "tokens_per_s": seen_tokens / elapsed,
        }
        if train.log_every and ((step + 1) % train.log_every == 0 or step + 1 == stage.steps):
            log.write(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{row['lr']:.2e}")
        if train.checkpoint_every and (step + 1) % train.checkpoint_every == 0 and step + 1 < stage.steps:
            _checkpoint(module, opt, sched, step + 1, sampler, stage, summary, ckpt_dir, dist, shard)
    bar.close()
    del graphs  # frees the graphs' memory pool
    if compiled:  # the next stage trains other parameters: its blocks compile afresh
        uncompile_blocks(compiled)
        torch._dynamo.reset()
    if shard is not None:  # the trained weights back into `model`, on every process; the shards go
        fsdp_unshard_into(shard, module)
        module.to(device)
        del net, shard, opt, trainable

    summary["final_loss"] = loss_value
    summary["probe_loss_end"] = mean_loss(module, probe, encoder_stage, device, precision)
    if data.valid and dist.is_main:
        # A fixed slice of the validation split keeps this cheap at every stage end.
        valid = _fixed_batches(data, data.valid, train.eval_batch_size, VALID_BATCHES * train.eval_batch_size)
        summary["valid_loss"] = mean_loss(module, valid, encoder_stage, device, precision)
    set_ssd_chunk_size(module, 0)
    if encoder_stage:
        summary["classes"] = module.classes
    log.write({"step": stage.steps, **{k: v for k, v in summary.items() if k not in ("classes", "steps")}})
    if dist.is_main:
        _publish_final(model, module if encoder_stage else None, stage_dir, summary, exp)
    dist.barrier()
    if encoder_stage:
        model.set_trainable([])
    return summary


def _progress(name: str, start: int, total: int, enabled: bool, log: Path | None = None) -> Progress:
    return Progress(name, total, initial=start, enabled=enabled, log=log)


def _trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # Frozen parameters equal the stage's starting weights (the previous stage's final), so a
    # checkpoint only needs what trains plus buffers.
    params = dict(module.named_parameters(remove_duplicate=False))  # tied weights under every name
    keep = {n for n, p in params.items() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k in keep or k not in params}


def _checkpoint(
    module, opt, sched, step: int, sampler: StreamSampler, stage: StageConfig, summary: dict, ckpt_dir: Path, dist: Dist, shard: nn.Module | None = None
) -> None:
    if shard is not None:  # FSDP: every process gathers; rank 0 writes the same full state as one process would
        fsdp_unshard_into(shard, module)
        full_optimizer = _full_optimizer_state(opt)
    rngs: list[Any] = [rng_state()]
    if dist.world_size > 1:
        rngs = [None] * dist.world_size
        tdist.all_gather_object(rngs, rng_state())
    if dist.is_main:
        state = {
            "step": step,
            "stage": stage.name,
            "module": _trainable_state(module),
            "optimizer": full_optimizer if shard is not None else opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": rngs,
            "data": sampler.position(step * stage.grad_accum),
            "probe_loss_start": summary["probe_loss_start"],
        }
        save_checkpoint(ckpt_dir, step, state)
    dist.barrier()


def _restore(module: nn.Module, state: dict[str, Any], dist: Dist) -> None:
    """A checkpoint's weights into `module` (its optimizer and schedule are restored by the caller)."""
    missing = set(state["module"]) - set(module.state_dict())
    if missing:
        raise RuntimeError(f"checkpoint of stage {state.get('stage')} holds unknown weights, e.g. {sorted(missing)[0]}")
    module.load_state_dict(state["module"], strict=False)
    if len(state["rng"]) != dist.world_size:
        raise RuntimeError(f"checkpoint was written by {len(state['rng'])} processes; resume it with the same number (now {dist.world_size})")


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's switch for not broadcasting buffers before each forward (every process holds the same
    buffers already): `forward_sync_buffers` where torch has it (it deprecates `broadcast_buffers`)."""
    import inspect

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


# --------------------------------------------------------------------------------------------
# FSDP (`train.fsdp` under torchrun)


def _is_fsdp(net: nn.Module) -> bool:
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


def _full_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """`opt.state_dict()` with every sharded state gathered whole, on the CPU: the dict one process
    would save (parameters numbered in the same order). A collective."""
    sd = opt.state_dict()
    full = {}
    for i in sorted(sd["state"]):  # the same order on every process
        full[i] = {k: v.full_tensor().cpu() if hasattr(v, "full_tensor") else v for k, v in sd["state"][i].items()}
    return {**sd, "state": full}


def _restore_sharded_optimizer(opt: torch.optim.Optimizer, sched: Any, state: dict[str, Any]) -> None:
    """Load a whole optimizer state (`_full_optimizer_state`'s, or one process's) into an optimizer
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


def _publish_final(model: nn.Module, encoder_module: nn.Module | None, stage_dir: Path, summary: dict, exp: ExperimentConfig) -> None:
    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if encoder_module is not None:
            torch.save({"classes": encoder_module.classes, "head": encoder_module.head.state_dict()}, tmp / "encoder_head.pt")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmp / "experiment.json").write_text(json.dumps(to_dict(exp), indent=2))

    publish_dir(stage_dir / "final", build)
