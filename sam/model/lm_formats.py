"""Mamba-2 checkpoint formats: mamba_ssm's `MambaLMHeadModel` and transformers' `Mamba2ForCausalLM`.

Converts each format's config.json to and from `MambaConfig` (unsupported options raise
`CheckpointError` naming the file and the option), reads weights (safetensors, sharded safetensors,
or `pytorch_model.bin` through `torch.load(weights_only=True)`, never arbitrary pickles) and writes
files atomically. `sam.model.lm.MambaLM.from_pretrained` / `save_pretrained` use these.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sam.config import ConfigError, MambaConfig
from sam.model.mamba2 import check_config


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file, or its config/tensors do not fit; names file or key."""


def padded_vocab_size(cfg: MambaConfig) -> int:
    m = cfg.pad_vocab_size_multiple
    return cfg.vocab_size + (m - cfg.vocab_size % m) % m


# ssm_cfg keys of mamba_ssm's Mamba2 that only affect initialization (safe to ignore when loading).
_INIT_ONLY = {
    "layer",
    "A_init_range",
    "dt_min",
    "dt_max",
    "dt_init_floor",
    "conv_init",
    "use_mem_eff_path",
    "process_group",
    "sequence_parallel",
}
# ssm_cfg keys we do not implement, with the only value we support.
_FIXED = {
    "d_ssm": None,
    "D_has_hdim": False,
    "rmsnorm": True,
    "norm_before_gate": False,
    "bias": False,
    "conv_bias": True,
    "dt_limit": [0.0, float("inf")],
}
_SSM_FIELDS = ("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size")


def config_from_mamba_ssm(raw: dict[str, Any], where: Path | str = "config.json") -> MambaConfig:
    """mamba_ssm MambaConfig JSON -> MambaConfig; unsupported options raise CheckpointError naming them."""
    ssm = dict(raw.get("ssm_cfg") or {})
    if ssm.get("layer", "Mamba2") != "Mamba2":
        raise CheckpointError(f"{where}: ssm_cfg.layer is {ssm.get('layer')!r}; only Mamba2 layers are supported")
    for key in ("d_intermediate",):
        if raw.get(key, 0):
            raise CheckpointError(f"{where}: {key}={raw[key]} (MLP blocks) is not supported; only pure Mamba-2 stacks")
    if raw.get("attn_layer_idx"):
        raise CheckpointError(f"{where}: attn_layer_idx={raw['attn_layer_idx']} (hybrid attention) is not supported")
    for key, val in _FIXED.items():
        if key in ssm and ssm[key] != val and not (key == "dt_limit" and list(ssm[key]) == val):
            raise CheckpointError(f"{where}: ssm_cfg.{key}={ssm[key]!r} is not supported (only {val!r})")
    unknown = sorted(set(ssm) - set(_SSM_FIELDS) - _INIT_ONLY - set(_FIXED))
    if unknown:
        raise CheckpointError(f"{where}: unknown ssm_cfg key {unknown[0]!r}")
    kw: dict[str, Any] = {k: ssm[k] for k in _SSM_FIELDS if k in ssm}
    for k in (
        "d_model",
        "n_layer",
        "vocab_size",
        "rms_norm",
        "residual_in_fp32",
        "tie_embeddings",
        "pad_vocab_size_multiple",
        "norm_epsilon",
    ):
        if k in raw:
            kw[k] = raw[k]
    for k in ("d_model", "n_layer", "vocab_size"):
        if k not in raw:
            raise CheckpointError(f"{where}: missing field {k!r}")
    try:
        cfg = MambaConfig(**kw)
        check_config(cfg)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    return cfg


def config_to_mamba_ssm(cfg: MambaConfig) -> dict[str, Any]:
    return {
        "d_model": cfg.d_model,
        "d_intermediate": 0,
        "n_layer": cfg.n_layer,
        "vocab_size": cfg.vocab_size,
        "ssm_cfg": {"layer": "Mamba2", **{k: getattr(cfg, k) for k in _SSM_FIELDS}},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": cfg.rms_norm,
        "residual_in_fp32": cfg.residual_in_fp32,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
        "tie_embeddings": cfg.tie_embeddings,
        "norm_epsilon": cfg.norm_epsilon,
    }


def config_from_hf(raw: dict[str, Any], where: Path | str = "config.json") -> MambaConfig:
    """transformers Mamba2Config JSON -> MambaConfig (vocab taken as stored, i.e. already padded)."""
    if raw.get("model_type", "mamba2") != "mamba2":
        raise CheckpointError(f"{where}: model_type is {raw.get('model_type')!r}, expected 'mamba2'")
    for key, val in (("use_bias", False), ("use_conv_bias", True), ("hidden_act", "silu")):
        if raw.get(key, val) != val:
            raise CheckpointError(f"{where}: {key}={raw[key]!r} is not supported (only {val!r})")
    lim = raw.get("time_step_limit")
    if lim is not None and (as_float(lim[0]) != 0.0 or not math.isinf(as_float(lim[1]))):
        raise CheckpointError(f"{where}: time_step_limit={lim!r} is not supported (only [0, inf])")
    for k in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if k not in raw:
            raise CheckpointError(f"{where}: missing field {k!r}")
    d, expand = raw["hidden_size"], raw.get("expand", 2)
    headdim = raw.get("head_dim", 64)
    if "num_heads" in raw and raw["num_heads"] * headdim != d * expand:
        raise CheckpointError(
            f"{where}: num_heads * head_dim (= {raw['num_heads']} * {headdim}) must equal hidden_size * expand (= {d} * {expand})"
        )
    vocab = raw["vocab_size"]
    try:
        cfg = MambaConfig(
            d_model=d,
            n_layer=raw["num_hidden_layers"],
            vocab_size=vocab,
            d_state=raw.get("state_size", 128),
            d_conv=raw.get("conv_kernel", 4),
            expand=expand,
            headdim=headdim,
            ngroups=raw.get("n_groups", 8),
            chunk_size=raw.get("chunk_size", 256),
            norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=raw.get("residual_in_fp32", True),
            tie_embeddings=raw.get("tie_word_embeddings", False),
            pad_vocab_size_multiple=16 if isinstance(vocab, int) and vocab % 16 == 0 else 1,
        )
        check_config(cfg)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    return cfg


def as_float(v: Any) -> float:
    # transformers writes infinity as {"__float__": "Infinity"}; Python's json as a bare Infinity.
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


def config_to_hf(cfg: MambaConfig) -> dict[str, Any]:
    return {
        "architectures": ["Mamba2ForCausalLM"],
        "model_type": "mamba2",
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "vocab_size": padded_vocab_size(cfg),
        "state_size": cfg.d_state,
        "conv_kernel": cfg.d_conv,
        "expand": cfg.expand,
        "head_dim": cfg.headdim,
        "num_heads": cfg.d_model * cfg.expand // cfg.headdim,
        "n_groups": cfg.ngroups,
        "chunk_size": cfg.chunk_size,
        "layer_norm_epsilon": cfg.norm_epsilon,
        "residual_in_fp32": cfg.residual_in_fp32,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_bias": False,
        "use_conv_bias": True,
        "hidden_act": "silu",
        "rms_norm": cfg.rms_norm,
    }


def read_weights(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    st, index, pt = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    reading = path
    try:
        if st.is_file():
            reading = st
            return load_file(str(st))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out: dict[str, Tensor] = {}
            for shard in shards:
                if not (path / shard).is_file():
                    raise CheckpointError(f"{index} names shard {shard!r}, which is missing")
                reading = path / shard
                out.update(load_file(str(reading)))
            return out
        if pt.is_file():
            reading = pt
            state = torch.load(pt, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise CheckpointError(f"{pt}: expected a state dict, got {type(state).__name__}")
            return state
    except CheckpointError:
        raise
    except Exception as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise CheckpointError(f"{reading}: cannot read weights, truncated or damaged ({type(e).__name__}: {first[:160]})") from None
    raise CheckpointError(f"{path}: no weights file (expected model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


def atomic_write(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
