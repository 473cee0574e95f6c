"""The run cache: train an `ExperimentConfig` once, reuse every stage any later config shares.

Stage i of a curriculum is fully determined by the model, data and optimizer settings plus
stages 0..i, so it is stored under ``runs/stages/<i>-<name>-<hash of that prefix>/`` and any
config with the same prefix (a later experiment that only changes stage 4, say) starts from it.

Two stages train one part alone and are keyed by that part's settings only ("part stages"):
text-only LM pretraining (``stage_lm``: the LM's shape, tokenizer and text) and encoder
pretraining (``stage0``: the encoder's shape and the audio). SAM seeds each part's initial weights
separately, so one pretrained encoder serves every LM size, LoRA rank and token layout of a seed,
and one pretrained LM every encoder and layout. The model after stage i is therefore composed:
the last joint stage's final (all weights), then each later part stage's part (`stage_state`).
A run directory ``runs/<config_hash>-<device kind>/`` holds ``config.yaml``, ``run.json`` (which stage
directories it used), ``log.csv`` (all stages' step logs) and ``model/`` (the last stage's SAM
checkpoint, hard-linked where the file system allows).

Settings that cannot change the weights (log and checkpoint intervals, evaluation batch size,
decoding length, data root and worker count) are left out of the keys; the device kind is in
them, since bf16 autocast on CUDA and fp32 on CPU train different weights.

This module must never return a run directory whose model is incomplete, and never let two
processes train the same stage at once (a lock file serializes them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sam.checkpoint import publish_dir
from sam.config import (
    ConfigError,
    ExperimentConfig,
    config_hash,
    is_lm_stage,
    load_yaml,
    save_yaml,
)
from sam.config.identity import (
    run_dir_for,
    stage_dirs,
    stage_keys,
    stage_part,
    weight_settings,
)
from sam.data import build_examples
from sam.data.dataset import SAMDataset, collate
from sam.data.types import TASKS
from sam.model.sam import SAM
from sam.tokenizer import load_tokenizer, train_bpe
from sam.train.data import StageData, TextDataset, collate_text
from sam.train.distributed import Dist, init_distributed
from sam.train.heads import check_stages
from sam.train.loop import train_stage
from sam.train.rng import seed_all
from sam.train.validate import check_settings

# Identity rules are re-exported here, where the run cache has always offered them.
__all__ = ["run_dir_for", "stage_dirs", "stage_keys", "stage_part", "weight_settings"]


# The SAM state-dict prefix each part stage trains, and the model settings its weights depend on.
_PART_PREFIX = {"lm": "language_model.", "encoder": "audio_tower."}


@contextlib.contextmanager
def _lock(path: Path, dist: Dist) -> Iterator[None]:
    """Exclusive lock held by rank 0 while the other ranks wait at a barrier."""
    fh = None
    if dist.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "w")
        fcntl.flock(fh, fcntl.LOCK_EX)
    dist.barrier()
    try:
        yield
    finally:
        dist.barrier()
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


# --------------------------------------------------------------------------------------------
# Tokenizer and data


def get_tokenizer(exp: ExperimentConfig, runs_dir: str | Path, dist: Dist | None = None) -> Any:
    """The configured tokenizer dir, else a BPE trained on the corpus text (cached by data settings)."""

    dist = dist or Dist()
    if exp.model.tokenizer:
        if not Path(exp.model.tokenizer).is_dir():
            raise ConfigError(f"model.tokenizer: {exp.model.tokenizer} is not a directory")
        return load_tokenizer(exp.model.tokenizer)
    data = weight_settings(exp, "any")["data"]
    folder = Path(runs_dir) / "tokenizers" / config_hash({"data": data, "vocab_size": exp.data.bpe_vocab_size})
    with _lock(folder.with_name(folder.name + ".lock"), dist):
        if dist.is_main and not folder.is_dir():
            from sam.data import corpus_texts

            texts = list(corpus_texts(exp.data))
            publish_dir(folder, lambda tmp: train_bpe(texts, exp.data.bpe_vocab_size, tmp))
    return load_tokenizer(folder)


def stage_data(exp: ExperimentConfig, stage_index: int, tokenizer: Any) -> StageData:
    """Training and validation examples of a stage's task mixture, plus dataset/collate builders.

    An LM-pretraining stage gets every task's examples of each split as text only (the split's
    prompts and answers; `corpus_texts` would mix in the validation and test splits)."""

    stage = exp.train.stages[stage_index]
    if is_lm_stage(stage):
        train, valid = (build_examples(exp.data, split, list(TASKS)) for split in ("train", "valid"))
        return StageData(train, valid, lambda examples: TextDataset(examples, tokenizer), collate_text)
    train = build_examples(exp.data, "train", list(stage.tasks))
    valid = build_examples(exp.data, "valid", list(stage.tasks))
    audio_cfg, root = exp.model.audio, exp.data.root

    def make_dataset(examples: list[Any]) -> Any:
        # Stages and epochs revisit the same scenes: render each one once, to root/features.
        return SAMDataset(examples, audio_cfg, tokenizer, root, cache_dir=Path(root) / "features")

    return StageData(train, valid, make_dataset, collate)


# --------------------------------------------------------------------------------------------
# Weights between stages


def build_model(exp: ExperimentConfig, tokenizer: Any, device: torch.device) -> Any:

    seed_all(exp.train.seed)
    return SAM(exp.model, tokenizer).to(device)


def load_weights(model: Any, checkpoint_dir: Path, part: str | None = None) -> None:
    """Copy a stage's final weights (a SAM checkpoint dir) into `model` in place: all of them, or
    only `part` ("lm" | "encoder"; LoRA adapters excluded, so the ranks of the two may differ)."""
    from safetensors.torch import load_file

    if part is None:
        model.load_state_dict(SAM.from_pretrained(checkpoint_dir).state_dict(), strict=True)
        return
    saved = load_file(str(Path(checkpoint_dir) / "model.safetensors"))
    prefix = _PART_PREFIX[part]
    theirs = {_base_name(k): v for k, v in saved.items() if k.startswith(prefix) and "lora_" not in k}
    names: dict[int, list[str]] = {}  # tied weights (LM head = embedding) are one tensor under several names
    tensors: dict[int, torch.Tensor] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if k.startswith(prefix) and "lora_" not in k:
            names.setdefault(id(v), []).append(_base_name(k))
            tensors[id(v)] = v
    with torch.no_grad():
        for key, tensor in tensors.items():
            found = [n for n in names[key] if n in theirs]
            if not found:
                raise ConfigError(
                    f"{checkpoint_dir} has no {part} weights named {names[key][0]}; was it trained with another {part} shape?"
                )
            if tensor.shape != theirs[found[0]].shape:
                raise ConfigError(
                    f"{checkpoint_dir}: {found[0]} has shape {tuple(theirs[found[0]].shape)}, the model wants {tuple(tensor.shape)}"
                )
            tensor.copy_(theirs[found[0]])


def _base_name(key: str) -> str:
    """A LoRA-wrapped weight's name without peft's ``base_layer`` level."""
    return key.replace(".base_layer.", ".")


def stage_state(exp: ExperimentConfig, index: int) -> list[tuple[int, str | None]]:
    """Which stage finals make up the model after stage `index`, in load order: (stage, part),
    part None = all weights. Stages before the last joint stage are already inside it."""
    joint = [i for i in range(index + 1) if stage_part(exp, i) is None]
    start = joint[-1] if joint else 0
    return [(i, stage_part(exp, i)) for i in range(start, index + 1)]


def compose(model: Any, exp: ExperimentConfig, dirs: list[Path], index: int, init: dict[str, torch.Tensor] | None = None) -> None:
    """Set `model` (built from `exp`) to its weights after stage `index` (-1: the initial weights).
    `init` restores the initial weights where part stages build on them; None: `model` still holds them."""
    parts = stage_state(exp, index) if index >= 0 else []
    if init is not None and (not parts or parts[0][1] is not None):
        model.load_state_dict(init, strict=True)
    for i, part in parts:
        load_weights(model, dirs[i] / "final", part)


def _composed_model(exp: ExperimentConfig, dirs: list[Path], index: int, runs_dir: Path) -> Any:
    """A freshly built SAM of `exp` (on CPU) with its weights after stage `index`."""
    model = build_model(exp, get_tokenizer(exp, runs_dir), torch.device("cpu"))
    compose(model, exp, dirs, index)
    return model


def stage_model(run_dir: str | Path, stage: int | str, device: str | None = None) -> Any:
    """A finished run's SAM as it was after `stage` (index or name), composed from the run cache."""

    run_dir = Path(run_dir)
    exp = load_yaml(run_dir / "config.yaml")
    names = [s.name for s in exp.train.stages]
    index = names.index(stage) if isinstance(stage, str) and stage in names else stage
    if not isinstance(index, int) or not 0 <= index < len(names):
        raise ConfigError(f"run {run_dir} has no stage {stage!r}; it has {names}")
    info = json.loads((run_dir / "run.json").read_text())
    dirs = [(run_dir / st["dir"]).resolve() for st in info["stages"]]
    if stage_part(exp, index) is None:
        model = SAM.from_pretrained(dirs[index] / "final")
    else:
        model = _composed_model(exp, dirs, index, run_dir.parent)
    return model.to(device) if device else model


def _link_tree(src: Path, dst: Path) -> None:
    def copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


# --------------------------------------------------------------------------------------------
# The cache


def train_or_load(exp: ExperimentConfig, runs_dir: str | Path = "runs", device: str | None = None, progress: bool = True) -> Path:
    """Train `exp` (reusing every cached stage it shares with earlier runs) and return its run dir.

    Under torchrun every process calls this; rank 0 writes, all ranks train.
    """
    check_stages(exp.train)
    check_settings(exp)
    dist = init_distributed(device)
    runs_dir = Path(runs_dir)
    run_dir = run_dir_for(exp, runs_dir, dist.device.type)
    if (run_dir / "model").is_dir():
        return run_dir
    dirs = stage_dirs(exp, runs_dir, dist.device.type)
    tokenizer = get_tokenizer(exp, runs_dir, dist)
    model = build_model(exp, tokenizer, dist.device)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    holds = -1  # `model` holds the weights after this stage (-1: initial)
    summaries = []
    for i, (_stage, sdir) in enumerate(zip(exp.train.stages, dirs)):
        with _lock(sdir.with_name(sdir.name + ".lock"), dist):
            final = sdir / "final"
            if not final.is_dir():
                if holds != i - 1:
                    compose(model, exp, dirs, i - 1, init)
                train_stage(model, exp, i, stage_data(exp, i, tokenizer), sdir, dist, progress)
                holds = i
        summaries.append(json.loads((final / "summary.json").read_text()))
    del init
    # Two processes may train the same config concurrently (the stage locks keep the stages
    # single-writer); the run directory is a pure function of those stages, so the process that
    # publishes second keeps the first one's copy.
    with _lock(run_dir.with_name(run_dir.name + ".lock"), dist):
        if dist.is_main and not (run_dir / "model").is_dir():
            _publish_run(exp, run_dir, dirs, summaries, dist)
    return run_dir


def _publish_run(exp: ExperimentConfig, run_dir: Path, dirs: list[Path], summaries: list[dict], dist: Dist) -> None:
    import pandas as pd

    def build(tmp: Path) -> None:
        save_yaml(exp, tmp / "config.yaml")
        info = {
            "config_hash": config_hash(exp),
            "device": dist.device.type,
            "world_size": dist.world_size,
            "stages": [
                {"name": s.name, "dir": os.path.relpath(d, run_dir), "summary": m} for s, d, m in zip(exp.train.stages, dirs, summaries)
            ],
        }
        (tmp / "run.json").write_text(json.dumps(info, indent=2))
        logs = [pd.read_csv(d / "log.csv") for d in dirs if (d / "log.csv").is_file()]
        if logs:
            pd.concat(logs, ignore_index=True).to_csv(tmp / "log.csv", index=False)
        if stage_part(exp, len(dirs) - 1) is None:
            _link_tree(dirs[-1] / "final", tmp / "model")
        else:  # a part stage's final holds other parts of whichever config trained it first
            _composed_model(exp, dirs, len(dirs) - 1, run_dir.parent).save_pretrained(tmp / "model")

    if run_dir.is_dir() and not (run_dir / "model").is_dir():
        shutil.rmtree(run_dir)  # an unfinished publish from a killed process
    publish_dir(run_dir, build)


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[Any, ExperimentConfig]:
    """The trained SAM of a run directory and the config it was trained with."""

    run_dir = Path(run_dir)
    if not (run_dir / "model").is_dir():
        raise ConfigError(f"{run_dir} is not a finished run directory (no model/ inside); train it with `sam train`")
    exp = load_yaml(run_dir / "config.yaml")
    model = SAM.from_pretrained(run_dir / "model")
    if device:
        model = model.to(device)
    return model, exp
