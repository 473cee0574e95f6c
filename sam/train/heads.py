"""What each kind of stage trains and what its loss averages over: the stage-0 encoder classifier, the
text-only LM, stage checks, loss units and token counters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sam.config import TEXT_TASK, ConfigError, TrainConfig, is_lm_stage
from sam.data.types import TASKS, label_matrix
from sam.prompt import IGNORE_INDEX

# --------------------------------------------------------------------------------------------
# Stage checks


GROUPS = ("encoder", "connector", "lora", "lm", "head", "classifier")


def check_stages(train: TrainConfig) -> None:
    """Raise ConfigError naming the key of the first impossible stage setting."""
    if not train.stages:
        raise ConfigError("train.stages is empty; a run needs at least one stage")
    for i, stage in enumerate(train.stages):
        key = f"train.stages.{i}"
        bad = sorted(set(stage.trainable) - set(GROUPS))
        if bad or not stage.trainable:
            raise ConfigError(
                f"{key}.trainable: unknown group {bad[0]!r}; choose from {', '.join(GROUPS)}" if bad else f"{key}.trainable is empty"
            )
        other = sorted(set(stage.trainable) - {"encoder", "classifier"})
        if "classifier" in stage.trainable and other:
            raise ConfigError(f"{key}.trainable: a 'classifier' stage trains encoder + classifier only, not {other[0]!r}")
        if is_lm_stage(stage):
            if stage.tasks != [TEXT_TASK] or stage.trainable != ["lm"]:
                raise ConfigError(
                    f"{key}: an LM-pretraining stage has tasks [{TEXT_TASK}] and trainable [lm] only (got {stage.tasks}, {stage.trainable})"
                )
        bad = sorted(set(stage.tasks) - set(TASKS) - ({TEXT_TASK} if is_lm_stage(stage) else set()))
        if bad or not stage.tasks:
            raise ConfigError(
                f"{key}.tasks: unknown task {bad[0]!r}; choose from {', '.join(TASKS)} (or [{TEXT_TASK}] alone, for LM pretraining)"
                if bad
                else f"{key}.tasks is empty"
            )
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
# Modules trained by part stages


def spec_mask(fbank: torch.Tensor, freq: int, time: int) -> torch.Tensor:
    """SpecAugment's masking (Park et al. 2019) of a batch [B, frames, mel]: per clip, one band of
    U{0..freq} mel bins and one span of U{0..time} frames, each at a uniform position, set to 0. Draws
    from the global RNG of the batch's device, which checkpoints save and resume restores."""
    if fbank.ndim != 3:
        raise ValueError(f"spec_mask: expected fbank [batch, frames, mel], got shape {tuple(fbank.shape)}")
    keep = torch.ones_like(fbank, dtype=torch.bool)
    for axis, width in ((2, freq), (1, time)):
        if width <= 0:
            continue
        size = fbank.shape[axis]
        w = torch.randint(0, min(width, size) + 1, (fbank.shape[0],), device=fbank.device)
        start = (torch.rand(fbank.shape[0], device=fbank.device) * (size - w + 1)).long()
        pos = torch.arange(size, device=fbank.device)
        band = (pos >= start[:, None]) & (pos < (start + w)[:, None])  # [B, size]
        keep &= ~(band[:, None, :] if axis == 2 else band[:, :, None])
    return fbank * keep


class EncoderClassifier(nn.Module):
    """Audio tower + linear multi-label head on the mean-pooled patch grid (stands in for EAT's
    AudioSet finetuning). The head is discarded after the stage; the tower is SAM's own module.
    In training mode, `freq_mask` / `time_mask` > 0 apply `spec_mask` to the input."""

    def __init__(self, audio_tower: nn.Module, dim: int, classes: Sequence[str], freq_mask: int = 0, time_mask: int = 0):
        super().__init__()
        if freq_mask < 0 or time_mask < 0:
            raise ConfigError(f"model.encoder.pretrain_freq_mask / pretrain_time_mask must be >= 0, got {freq_mask} / {time_mask}")
        self.audio_tower = audio_tower
        self.classes = list(classes)
        self.head = nn.Linear(dim, len(self.classes))
        self.freq_mask, self.time_mask = freq_mask, time_mask

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        fbank = batch["fbank"]
        if self.training and (self.freq_mask or self.time_mask):
            fbank = spec_mask(fbank, self.freq_mask, self.time_mask)
        grid = self.audio_tower(fbank)  # [B, T, F, D]
        logits = self.head(grid.mean(dim=(1, 2)))
        target = self.targets(batch["examples"]).to(logits.device)
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), target), logits

    def targets(self, examples: Sequence[Any]) -> torch.Tensor:
        return torch.from_numpy(label_matrix(examples, self.classes)).float()


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


# --------------------------------------------------------------------------------------------
# Loss units and token counters


def loss_units(batch: dict[str, Any], encoder_stage: bool) -> int:
    """What the loss averages over: clips for the head, labelled tokens for the LM (response tokens,
    or every text token but the first in LM pretraining)."""
    if encoder_stage:
        return int(batch["fbank"].shape[0])
    return int((batch["labels"] != IGNORE_INDEX).sum())


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


def patch_tokens(audio_tower: nn.Module) -> Callable[[dict[str, Any], torch.Tensor, int], int]:
    """Counter of encoder patch tokens per batch, for the encoder-pretraining stage."""

    def count(batch: dict[str, Any], _logits: torch.Tensor, _text: int) -> int:
        t, f = audio_tower.grid_shape(int(batch["fbank"].shape[1]))
        return int(batch["fbank"].shape[0]) * t * f

    return count
