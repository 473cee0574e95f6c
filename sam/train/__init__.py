"""Training: one curriculum stage at a time, and the run cache that chains stages into runs.

Read in this order: `loop` (`train_stage`: set up, resume, step, publish), `step` (one optimizer step),
`heads` (what each kind of stage trains and counts), `data` (sample order, loaders), `speed` (autocast,
CUDA graphs, compile), `distributed` (torchrun, DDP, FSDP), `resume` and `rng` (stage checkpoints),
`logs`, and `runs` (the run cache; the naming rules live in `sam.config.identity`).
Names load lazily, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ConfigError": "sam.config",
    "ExperimentConfig": "sam.config",
    "StageConfig": "sam.config",
    "TEXT_TASK": "sam.config",
    "TrainConfig": "sam.config",
    "is_encoder_stage": "sam.config",
    "is_lm_stage": "sam.config",
    "StageData": "sam.train.data",
    "StreamSampler": "sam.train.data",
    "TextDataset": "sam.train.data",
    "WithLabelPositions": "sam.train.data",
    "collate_text": "sam.train.data",
    "fixed_batches": "sam.train.data",
    "make_loader": "sam.train.data",
    "Dist": "sam.train.distributed",
    "all_sum": "sam.train.distributed",
    "blocks": "sam.train.distributed",
    "ddp_kwargs": "sam.train.distributed",
    "fsdp_shard": "sam.train.distributed",
    "fsdp_unshard_into": "sam.train.distributed",
    "full_optimizer_state": "sam.train.distributed",
    "init_distributed": "sam.train.distributed",
    "is_fsdp": "sam.train.distributed",
    "restore_sharded_optimizer": "sam.train.distributed",
    "EncoderClassifier": "sam.train.heads",
    "GROUPS": "sam.train.heads",
    "TextLM": "sam.train.heads",
    "audio_lm_tokens": "sam.train.heads",
    "check_stages": "sam.train.heads",
    "class_vocabulary": "sam.train.heads",
    "lm_tokens": "sam.train.heads",
    "loss_units": "sam.train.heads",
    "patch_tokens": "sam.train.heads",
    "StageLog": "sam.train.logs",
    "progress_bar": "sam.train.logs",
    "VALID_BATCHES": "sam.train.loop",
    "train_stage": "sam.train.loop",
    "publish_final": "sam.train.resume",
    "restore_weights": "sam.train.resume",
    "save_stage_checkpoint": "sam.train.resume",
    "trainable_state": "sam.train.resume",
    "rng_state": "sam.train.rng",
    "seed_all": "sam.train.rng",
    "set_rng_state": "sam.train.rng",
    "stage_seed": "sam.train.rng",
    "CudaGraphs": "sam.train.speed",
    "autocast": "sam.train.speed",
    "check_compile": "sam.train.speed",
    "compile_blocks": "sam.train.speed",
    "uncompile_blocks": "sam.train.speed",
    "lr_lambda": "sam.train.step",
    "make_optimizer": "sam.train.step",
    "mean_loss": "sam.train.step",
    "to_device": "sam.train.step",
    "train_step": "sam.train.step",
    "trainable_params": "sam.train.step",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sam.train' has no attribute {name!r}")
