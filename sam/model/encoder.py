"""Audio encoders: an EAT-style ViT over fbank patches (tiny/small/base), EAT checkpoint loading, and AST.

`AudioEncoder` turns a normalized fbank [B, frames, mel] into a patch grid [B, T, F, D]
(16x16 patches: 1024 x 128 -> 64 x 8, 512 frames -> 32 x 8) plus a CLS vector. Its module names
(`patch_embed`, `blocks[i]`, `norm`) are what probes hook. Blocks are pre-norm by default; with
``norm_first=False`` they follow EAT's data2vec-2.0 post-norm layout (LayerNorm on the input, none at
the end) so released EAT weights load exactly. ``kind="ast"`` wraps `transformers.ASTModel` from a
local directory and returns the same [B, T, F, D] layout.

Checkpoint loading must never unpickle code: safetensors are read directly, and fairseq `.pt` files go
through `torch.load(weights_only=True)` with only inert stand-ins allowed for the configuration
objects (omegaconf, argparse, enums, numpy scalars) that fairseq pickles beside the weights. A stand-in
records what it is given and runs nothing. Any other pickled global is refused with its name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from sam.config import AudioConfig, EncoderConfig

# (embed_dim, depth, num_heads); base is EAT-base / ViT-B.
SIZES: dict[str, tuple[int, int, int]] = {"tiny": (96, 2, 3), "small": (192, 4, 3), "base": (768, 12, 12)}
_LN_EPS = 1e-6  # EAT's norm_eps


class EncoderCheckpointError(ValueError):
    """An encoder checkpoint is missing, unreadable or does not fit the configured encoder."""


def encoder_shape(cfg: EncoderConfig) -> tuple[int, int, int]:
    """(embed_dim, depth, num_heads) from `cfg.size`, with explicit non-zero fields overriding it."""
    if cfg.size not in SIZES:
        raise ValueError(f"encoder.size {cfg.size!r} unknown; choose one of {', '.join(SIZES)}")
    dim, depth, heads = SIZES[cfg.size]
    dim, depth, heads = cfg.embed_dim or dim, cfg.depth or depth, cfg.num_heads or heads
    if dim % heads:
        raise ValueError(f"encoder.embed_dim={dim} is not divisible by encoder.num_heads={heads}")
    if dim % 4:
        raise ValueError(f"encoder.embed_dim={dim} must be a multiple of 4 for 2-D sin-cos positions")
    return dim, depth, heads


def sincos_2d(dim: int, t: int, f: int) -> Tensor:
    """EAT/MAE fixed 2-D sin-cos positions [t * f, dim], rows in time-major order (index = ti * f + fi).

    The first half of the channels encodes the frequency index and the second half the time index,
    as in EAT's `get_2d_sincos_pos_embed_flexible` (whose meshgrid puts the width axis first).
    """

    def one_d(d: int, pos: Tensor) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1).double() * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    ti, fi = torch.meshgrid(torch.arange(t), torch.arange(f), indexing="ij")
    return torch.cat([one_d(dim // 2, fi), one_d(dim // 2, ti)], dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Transformer block; parameter names (norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2) match EAT."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class AudioEncoder(nn.Module):
    """EAT-style ViT: fbank [B, frames, mel] -> patch grid [B, T, F, D] (+ CLS via `forward_features`).

    ``AudioEncoder(cfg)`` with ``cfg.kind == "ast"`` builds an `ASTEncoder` instead, so callers
    construct every encoder the same way. A non-empty ``cfg.checkpoint`` is loaded at construction.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        enc_cfg = args[0] if args else kwargs.get("enc_cfg")
        if enc_cfg is None:  # copy / unpickle: no config, plain instance
            return super().__new__(cls)
        if cls is AudioEncoder and enc_cfg.kind == "ast":
            return ASTEncoder(*args, **kwargs)
        if enc_cfg.kind not in ("eat", "ast"):
            raise ValueError(f"encoder.kind {enc_cfg.kind!r} unknown; choose eat or ast")
        return super().__new__(cls)

    def __init__(self, enc_cfg: EncoderConfig, audio_cfg: AudioConfig) -> None:
        super().__init__()
        dim, depth, heads = encoder_shape(enc_cfg)
        p = enc_cfg.patch_size
        if audio_cfg.target_frames < p or audio_cfg.num_mel_bins < p:
            raise ValueError(
                f"audio.target_frames={audio_cfg.target_frames} and audio.num_mel_bins={audio_cfg.num_mel_bins} must be >= encoder.patch_size={p}"
            )
        self.embed_dim, self.patch_size, self.norm_first = dim, p, enc_cfg.norm_first
        self.max_t, self.f = audio_cfg.target_frames // p, audio_cfg.num_mel_bins // p
        self.num_mel_bins = audio_cfg.num_mel_bins
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if enc_cfg.pos_embed == "fixed":
            self.register_buffer("pos_embed", sincos_2d(dim, self.max_t, self.f).unsqueeze(0))
        elif enc_cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.max_t * self.f, dim))
        else:
            raise ValueError(f"encoder.pos_embed {enc_cfg.pos_embed!r} unknown; choose fixed or learned")
        # EAT (post-norm) normalizes the token sequence before the first block; pre-norm stacks end with one.
        self.input_norm = nn.Identity() if enc_cfg.norm_first else nn.LayerNorm(dim, eps=_LN_EPS)
        self.blocks = nn.ModuleList([Block(dim, heads, enc_cfg.mlp_ratio, enc_cfg.dropout, enc_cfg.norm_first) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS) if enc_cfg.norm_first else nn.Identity()
        self._init_weights()
        if enc_cfg.checkpoint:
            load_eat_checkpoint(self, enc_cfg.checkpoint)

    def _init_weights(self) -> None:
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def grid_shape(self, frames: int) -> tuple[int, int]:
        """(T, F) patch grid for an input of `frames` fbank frames."""
        return frames // self.patch_size, self.f

    def forward_features(self, fbank: Tensor) -> tuple[Tensor, Tensor]:
        """fbank [B, frames, mel] -> (grid [B, T, F, D], cls [B, D])."""
        if fbank.dim() != 3 or fbank.shape[-1] != self.num_mel_bins:
            raise ValueError(f"encoder input must be [batch, frames, {self.num_mel_bins}] fbank, got {tuple(fbank.shape)}")
        t, f = self.grid_shape(fbank.shape[1])
        if not 1 <= t <= self.max_t:
            raise ValueError(
                f"fbank has {fbank.shape[1]} frames; the encoder takes {self.patch_size} to {self.max_t * self.patch_size} (audio.target_frames)"
            )
        x = self.patch_embed(fbank.unsqueeze(1))  # [B, D, T, F]
        x = x.flatten(2).transpose(1, 2) + self.pos_embed[:, : t * f]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.input_norm(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x[:, 1:].reshape(x.shape[0], t, f, -1), x[:, 0]

    def forward(self, fbank: Tensor) -> Tensor:
        return self.forward_features(fbank)[0]


class ASTEncoder(nn.Module):
    """`transformers.ASTModel` from a local directory, returning the patch grid [B, T, F, D].

    AST's patches overlap (stride 10), so a 1024-frame input gives a 101 x 12 grid. `patch_embed`,
    `blocks` and `norm` point at AST's own modules for probes.
    """

    def __init__(self, enc_cfg: EncoderConfig, audio_cfg: AudioConfig) -> None:
        super().__init__()
        from transformers import ASTModel

        path = Path(enc_cfg.checkpoint)
        if not enc_cfg.checkpoint or not (path / "config.json").is_file():
            raise EncoderCheckpointError(
                f"encoder.kind=ast needs encoder.checkpoint = a local Hugging Face AST directory with config.json; got {enc_cfg.checkpoint!r}"
            )
        self.ast = ASTModel.from_pretrained(str(path), local_files_only=True)
        c = self.ast.config
        if c.max_length != audio_cfg.target_frames or c.num_mel_bins != audio_cfg.num_mel_bins:
            raise EncoderCheckpointError(
                f"{path}: AST expects {c.max_length} frames x {c.num_mel_bins} mel bins; set audio.target_frames={c.max_length} and audio.num_mel_bins={c.num_mel_bins}"
            )
        self.f, self.t = self.ast.embeddings.get_shape(c)
        self.embed_dim = c.hidden_size

    @property
    def patch_embed(self) -> nn.Module:
        return self.ast.embeddings.patch_embeddings

    @property
    def blocks(self) -> nn.ModuleList:
        # transformers >= 5 keeps the blocks at `layers`; 4.x at `encoder.layer`
        layers = getattr(self.ast, "layers", None)
        return layers if layers is not None else self.ast.encoder.layer

    @property
    def norm(self) -> nn.Module:
        return self.ast.layernorm

    def grid_shape(self, frames: int) -> tuple[int, int]:
        return self.t, self.f

    def forward_features(self, fbank: Tensor) -> tuple[Tensor, Tensor]:
        h = self.ast(input_values=fbank).last_hidden_state  # [B, 2 + F*T, D], patches frequency-major
        grid = h[:, 2:].reshape(h.shape[0], self.f, self.t, -1).transpose(1, 2)
        return grid, (h[:, 0] + h[:, 1]) / 2  # AST pools its CLS and distillation tokens this way

    def forward(self, fbank: Tensor) -> Tensor:
        return self.forward_features(fbank)[0]


# --------------------------------------------------------------------------------------------
# EAT checkpoints: fairseq .pt (Data2VecMultiModel, pretrained or finetuned) and HF worstchan/EAT-*


class _Inert:
    """Stand-in for a pickled configuration object: keeps its arguments and state, executes nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:  # used as a default_factory or reducer
        return _Inert(*args, **kwargs)


# Globals that fairseq pickles beside the weights (its omegaconf config, argparse args, config enums,
# numpy scalars in training metrics). Only these may appear; each becomes `_Inert`.
_INERT_GLOBAL = re.compile(
    r"^(omegaconf\..+|fairseq\..+|argparse\.Namespace|typing\.Any|collections\.defaultdict|builtins\.(dict|list|int|float|str|bool|tuple|set)"
    r"|numpy\.(core|_core)\.multiarray\.scalar|numpy\.dtype|numpy\.dtypes\.\w+|[\w.]+\.(Modality|PredictionMode))$"
)


def _load_fairseq_pt(path: Path) -> dict[str, Any]:
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:
        raise EncoderCheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    refused = sorted(g for g in needed if not _INERT_GLOBAL.match(g))
    if refused:
        raise EncoderCheckpointError(
            f"{path}: refusing to unpickle {', '.join(refused)} (only weights and fairseq/omegaconf config objects are accepted)"
        )
    with torch.serialization.safe_globals([(_Inert, g) for g in needed]):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise EncoderCheckpointError(f"{path}: cannot load ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise EncoderCheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    state = obj.get("model", obj)
    if not isinstance(state, dict):
        raise EncoderCheckpointError(f"{path}: 'model' entry is {type(state).__name__}, not a state dict")
    return state


def read_eat_state(path: str | Path) -> dict[str, Tensor]:
    """Raw tensors of an EAT checkpoint: fairseq `.pt`, a `.safetensors` file, or an HF directory."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pt")) + sorted(path.glob("*.bin"))
        if not files:
            raise EncoderCheckpointError(f"{path}: no *.safetensors, *.pt or *.bin weights in this directory")
        state: dict[str, Any] = {}
        for f in files:
            state.update(read_eat_state(f))
        return state
    if not path.is_file():
        raise EncoderCheckpointError(f"encoder checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise EncoderCheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    return {k: v for k, v in _load_fairseq_pt(path).items() if isinstance(v, Tensor)}


# checkpoint key (after an optional "model." prefix) -> our key; None = known but unused (heads, decoders, EMA)
_KEY_RULES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"^(?:modality_encoders\.IMAGE\.)?local_encoder\.proj\.(weight|bias)$"), r"patch_embed.\1"),
    (re.compile(r"^(?:modality_encoders\.IMAGE\.)?extra_tokens$"), "cls_token"),
    (re.compile(r"^(?:modality_encoders\.IMAGE\.)?fixed_positional_encoder\.positions$"), "pos_embed"),
    (re.compile(r"^modality_encoders\.IMAGE\.context_encoder\.norm\.(weight|bias)$"), r"input_norm.\1"),
    (re.compile(r"^pre_norm\.(weight|bias)$"), r"input_norm.\1"),
    (re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$"), r"blocks.\1.\2.\3"),
    (re.compile(r"^norm\.(weight|bias)$"), r"norm.\1"),
    (
        re.compile(
            r"^(_ema|modality_encoders\.IMAGE\.decoder\.|decoder\.|fc_norm\.|head\.|recon_proj\.|cls_proj\.|center$|"
            r"modality_encoders\.IMAGE\.(alibi_scale|encoder_mask)|modality_encoders\.IMAGE\.positional_encoder\.)"
        ),
        None,
    ),
]


def map_eat_keys(state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename EAT (fairseq or HF) keys to `AudioEncoder` keys; unknown keys raise naming the first."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        k = key[len("model.") :] if key.startswith("model.") else key
        for pattern, target in _KEY_RULES:
            if pattern.search(k):
                if target is not None:
                    out[pattern.sub(target, k)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise EncoderCheckpointError(f"{source}: unrecognized key {unknown[0]!r} ({len(unknown)} in all); not an EAT encoder checkpoint?")
    return out


def load_eat_checkpoint(encoder: AudioEncoder, path: str | Path) -> None:
    """Load EAT weights (fairseq `.pt` or HF safetensors) into `encoder`, checking layout and shapes."""
    source = str(path)
    state = map_eat_keys(read_eat_state(path), source)
    has_input_norm = "input_norm.weight" in state
    if has_input_norm == encoder.norm_first:
        want = "false" if has_input_norm else "true"
        raise EncoderCheckpointError(
            f"{source}: checkpoint blocks are {'post' if has_input_norm else 'pre'}-norm; set encoder.norm_first={want}"
        )
    _check_heads(Path(path), encoder)
    own = encoder.state_dict()
    if "pos_embed" in state:
        pos = (
            state["pos_embed"].reshape(1, -1, encoder.embed_dim)
            if state["pos_embed"].shape[-1] == encoder.embed_dim
            else state["pos_embed"]
        )
        if pos.shape[1] < own["pos_embed"].shape[1]:
            raise EncoderCheckpointError(
                f"{source}: positions cover {pos.shape[1]} patches, the encoder needs {own['pos_embed'].shape[1]} (audio.target_frames too large)"
            )
        state["pos_embed"] = pos[:, : own["pos_embed"].shape[1]]
    elif isinstance(encoder.pos_embed, nn.Parameter):
        raise EncoderCheckpointError(f"{source}: no positional embeddings, but encoder.pos_embed=learned needs them")
    else:
        state["pos_embed"] = own["pos_embed"]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:4]}" if missing else f"unexpected {unexpected[:4]}"
        raise EncoderCheckpointError(
            f"{source}: does not fit encoder of depth {len(encoder.blocks)} and dim {encoder.embed_dim}: {detail} (set encoder.depth / embed_dim / size)"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise EncoderCheckpointError(
                f"{source}: {k} has shape {tuple(state[k].shape)}, the encoder expects {tuple(v.shape)} (check encoder.size / embed_dim)"
            )
    encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _check_heads(path: Path, encoder: AudioEncoder) -> None:
    """Head count is invisible in the weights; an HF config.json beside them states it."""
    cfg_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not cfg_file.is_file():
        return
    try:
        heads = json.loads(cfg_file.read_text()).get("num_heads")
    except (json.JSONDecodeError, AttributeError):
        return
    ours = encoder.blocks[0].attn.heads if len(encoder.blocks) else heads
    if heads is not None and heads != ours:
        raise EncoderCheckpointError(f"{cfg_file}: num_heads={heads} but the encoder has {ours}; set encoder.num_heads={heads}")


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "AudioEncoder",
    "ASTEncoder",
    "EncoderCheckpointError",
    "SIZES",
    "encoder_shape",
    "load_eat_checkpoint",
    "map_eat_keys",
    "read_eat_state",
    "sincos_2d",
]
