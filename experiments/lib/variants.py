"""The recipe variants of `check_learning_curve.py` (and `learning_curve_report.py`, which rebuilds their test
scenes): each a list of config changes on the preset's curriculum, and the config it gives."""

from __future__ import annotations

from typing import Any

from sam.config import apply_overrides
from sam.config import preset as make_preset

AUDIO_STAGES = ("stage1", "stage2", "stage3", "stage4")


def _steps(factor: float) -> list[str]:
    return [f"train.stages.{name}.steps*{factor}" for name in AUDIO_STAGES]


# name -> (what it changes, config changes). "KEY*F" multiplies a number: "train.stages.NAME.steps*F" a
# stage's steps (and its warmup), "data.n_train*F" the training scenes.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the preset as it is", []),
    "steps_x3": ("3x the audio stages' steps", _steps(3)),
    "steps_x10": ("10x the audio stages' steps", _steps(10)),
    "token_norm": ("audio tokens RMS-normalized to the text-embedding norm", ["model.connector.token_norm=0.7"]),
    "token_norm_x3": ("token_norm and 3x the audio steps", ["model.connector.token_norm=0.7", *_steps(3)]),
    "scenes_x4": ("4x the training scenes (every stage draws from 4x as many scene mixtures)", ["data.n_train*4"]),
    "scenes_x4_steps_x3": ("4x the training scenes and 3x the audio stages' steps", ["data.n_train*4", *_steps(3)]),
    "encoder_x3": (
        "4x the training scenes and 3x the encoder-pretraining steps",
        ["data.n_train*4", "train.stages.stage0.steps*3"],
    ),
    "encoder_lr": (
        "4x the training scenes, 4.5x the encoder-pretraining steps at lr 3e-4 (the best of the encoder sweep)",
        ["data.n_train*4", "train.stages.stage0.steps*4.5", "train.stages.stage0.lr=0.0003"],
    ),
    "cls_stage1": (
        "stage 1 on classification only, twice as long",
        ["train.stages.stage1.tasks=[classification]", "train.stages.stage1.steps*2"],
    ),
}


def variant_config(preset: str, name: str, seed: int, extra: list[str] | tuple[str, ...] = ()) -> Any:
    """The preset's small-LM config with a variant's changes (then `extra` overrides), at `seed`. The
    curriculum ends at stage 4, where the curve measures (the reasoning stage would only cost time)."""
    cfg = make_preset(preset, "small")
    cfg.train.stages = [s for s in cfg.train.stages if s.name != "stage5"]
    cfg.train.seed = cfg.data.seed = seed
    plain = []
    for change in VARIANTS[name][1]:
        key, _, value = change.partition("*") if "*" in change else (change, "", "")
        if not value:
            plain.append(change)
            continue
        parts = key.split(".")
        if parts[:2] == ["train", "stages"]:  # train.stages.<name>.steps
            stage = next(s for s in cfg.train.stages if s.name == parts[2])
            stage.steps = int(round(stage.steps * float(value)))
            stage.warmup_steps = max(1, stage.steps // 10)
        else:
            owner = cfg
            for part in parts[:-1]:
                owner = getattr(owner, part)
            setattr(owner, parts[-1], int(round(getattr(owner, parts[-1]) * float(value))))
    for i, stage in enumerate(cfg.train.stages):  # overrides address stages by index
        plain = [c.replace(f"train.stages.{stage.name}.", f"train.stages.{i}.") for c in plain]
    return apply_overrides(cfg, [*plain, *extra])
