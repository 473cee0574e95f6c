"""Run identity: which settings name a cached run and which name each trained stage.

Every rule that decides whether two configs share trained weights lives here, torch-free, so that
`sam.config.config_hash` stays cheap: settings that only change speed, settings omitted at their
default (so runs cached before they existed keep their names), and, per stage, the settings that
determine its weights (`stage_keys`). `sam.train.runs` applies these rules to the run cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from sam.config.io import to_dict
from sam.config.schema import ExperimentConfig, is_encoder_stage, is_lm_stage

# Settings that change only how fast a run trains, not what it computes: left out of every hash, so
# turning them on reuses (and names) the same cached runs.
SPEED_ONLY = {"train": ("cuda_graphs", "compile", "fsdp", "ssd_chunk_size")}


# Settings added after runs had been cached under hashes that did not include them: left out of
# every hash while they hold these defaults, so those runs keep their names.
HASH_OMIT_AT_DEFAULT = {
    "data": {"json_train": "", "json_test": "", "audio_dir": "", "valid_permille": 20},
    "model.connector": {"token_norm": 0.0},
    "model.encoder": {"pretrain_freq_mask": 0, "pretrain_time_mask": 0},
}


def hash_tree(cfg: Any) -> Any:
    """`to_dict(cfg)` less the `HASH_OMIT_AT_DEFAULT` settings that hold their default (for dataclass configs)."""
    tree = to_dict(cfg)
    if dataclasses.is_dataclass(cfg) and isinstance(tree, dict):
        for section, defaults in HASH_OMIT_AT_DEFAULT.items():
            *parents, leaf = section.split(".")
            node = tree
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and isinstance(node.get(leaf), dict):
                node[leaf] = {k: v for k, v in node[leaf].items() if not (k in defaults and v == defaults[k])}
    return tree


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a config tree: names cached runs. `SPEED_ONLY` settings are left out."""
    tree = hash_tree(cfg)
    if isinstance(tree, dict):
        for section, keys in SPEED_ONLY.items():
            if isinstance(tree.get(section), dict):
                tree = {**tree, section: {k: v for k, v in tree[section].items() if k not in keys}}
    blob = json.dumps(tree, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# --------------------------------------------------------------------------------------------
# Stage keys: what names each trained stage in the run cache

NOT_WEIGHT_FIELDS = {"data": ("root", "num_workers", "json_test", "n_test")}  # the test split never reaches training


# Trainer settings that change weights (the stages are keyed separately). An allow-list, so that a new
# speed-only option (compilation, CUDA graphs, logging) never invalidates the cache.
WEIGHT_TRAIN_FIELDS = ("weight_decay", "grad_clip", "min_lr_ratio", "precision", "seed")


def weight_settings(exp: ExperimentConfig, device_type: str) -> dict[str, Any]:
    d = hash_tree(exp)
    return {
        "model": d["model"],
        "data": {k: v for k, v in d["data"].items() if k not in NOT_WEIGHT_FIELDS["data"]},
        "train": {k: d["train"][k] for k in WEIGHT_TRAIN_FIELDS},
        "device": device_type,
    }


PART_MODEL_FIELDS = {"lm": ("lm", "lm_checkpoint", "tokenizer"), "encoder": ("audio", "encoder")}


def stage_part(exp: ExperimentConfig, index: int) -> str | None:
    """ "lm" or "encoder" for a stage that trains that part alone, None for a joint stage."""
    stage = exp.train.stages[index]
    if is_lm_stage(stage):
        return "lm"
    if is_encoder_stage(stage):
        return "encoder"
    return None


def stage_keys(exp: ExperimentConfig, device_type: str = "cpu") -> list[str]:
    """Hash per stage of everything that determines that stage's weights.

    A joint stage hashes the whole config prefix (stages 0..i). A part stage hashes only its part's
    model settings, the data and optimizer settings, its own stage and its index (the stage seed)."""
    base = weight_settings(exp, device_type)
    stages = to_dict(exp.train.stages)
    keys = []
    for i in range(len(stages)):
        part = stage_part(exp, i)
        if part is None:
            keys.append(config_hash({**base, "stages": stages[: i + 1]}))
        else:
            model = {k: v for k, v in base["model"].items() if k in PART_MODEL_FIELDS[part]}
            keys.append(config_hash({**base, "model": model, "part": part, "index": i, "stage": stages[i]}))
    return keys


def stage_dirs(exp: ExperimentConfig, runs_dir: str | Path = "runs", device_type: str = "cpu") -> list[Path]:
    root = Path(runs_dir) / "stages"
    return [root / f"{i}-{s.name}-{k}" for i, (s, k) in enumerate(zip(exp.train.stages, stage_keys(exp, device_type)))]


def run_dir_for(exp: ExperimentConfig, runs_dir: str | Path = "runs", device_type: str = "cpu") -> Path:
    """``runs/<config hash>-<device kind>``: CPU and CUDA train different weights from one config."""
    return Path(runs_dir) / f"{config_hash(exp)}-{device_type}"
