"""Configuration: one dataclass per part of SAM (`schema`), named presets (`presets`), YAML load/save and
dotted overrides (`io`), and the rules that name cached runs (`identity`).

Every other module takes its settings from these dataclasses and nothing else, so an experiment is
fully described by one `SAMConfig` + one `TrainConfig` (and its hash names the run in `runs/`).
The package imports no torch: it is the contract between parts and must stay cheap to import.

Overrides use dotted keys, e.g. ``lm.d_model=256 train.stages.1.lr=3e-4 encoder.size=small``;
unknown keys and values of the wrong type raise `ConfigError` naming the key.
"""

from sam.config.identity import HASH_OMIT_AT_DEFAULT, SPEED_ONLY, config_hash, hash_tree
from sam.config.io import apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from sam.config.presets import LM_SIZES, PAPER_LM_NAMES, preset
from sam.config.schema import (
    TEXT_TASK,
    AudioConfig,
    ConfigError,
    ConnectorConfig,
    DataConfig,
    EncoderConfig,
    EvalConfig,
    ExperimentConfig,
    LoraConfig,
    MambaConfig,
    SAMConfig,
    StageConfig,
    TrainConfig,
    is_encoder_stage,
    is_lm_stage,
)

__all__ = [
    "HASH_OMIT_AT_DEFAULT",
    "LM_SIZES",
    "PAPER_LM_NAMES",
    "SPEED_ONLY",
    "TEXT_TASK",
    "AudioConfig",
    "ConfigError",
    "ConnectorConfig",
    "DataConfig",
    "EncoderConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LoraConfig",
    "MambaConfig",
    "SAMConfig",
    "StageConfig",
    "TrainConfig",
    "apply_overrides",
    "config_hash",
    "from_dict",
    "hash_tree",
    "is_encoder_stage",
    "is_lm_stage",
    "load_yaml",
    "preset",
    "save_yaml",
    "to_dict",
]
