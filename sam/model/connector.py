"""Connector: the encoder's patch grid [B, T, F, D] -> audio tokens in LM space [B, N, lm_dim].

Layouts (the paper's token-length ablation):
- ``concat``: the F patches of each time step concatenated -> T tokens of F*D -> 2-layer MLP.
- ``time_major``: all T*F patches, time-major order, each through the MLP; the LM embedding of the
  separator text (``"&&"``) goes between consecutive time steps.
- ``freq_major``: the same patches in frequency-major order, separators between frequency bands.
- ``pool``: mean over F, then mean over every ``pool_time`` time steps -> ceil(T / pool_time) tokens.

With ``token_norm > 0`` every audio token is RMS-normalized after the MLP and scaled by a learned gain
(`token_norm` module), so the audio enters the LM at the scale of its text embeddings.

The MLP (`mlp`) sees exactly the layout's tokens, so a hook on it gives probes' ``connector.in``.
Separators are LM embeddings, not connector weights: this module never owns or trains them; they are
passed to `forward` (fresh from the LM's table) or fixed with `set_separator`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from sam.config import ConnectorConfig

LAYOUTS = ("concat", "time_major", "freq_major", "pool")


class Connector(nn.Module):
    def __init__(self, conn_cfg: ConnectorConfig, enc_dim: int, lm_dim: int, grid_shape: tuple[int, int], sep_len: int = 1) -> None:
        super().__init__()
        if conn_cfg.layout not in LAYOUTS:
            raise ValueError(f"connector.layout {conn_cfg.layout!r} unknown; choose one of {', '.join(LAYOUTS)}")
        if conn_cfg.pool_time < 1:
            raise ValueError(f"connector.pool_time must be >= 1, got {conn_cfg.pool_time}")
        self.layout, self.pool_time = conn_cfg.layout, conn_cfg.pool_time
        self.grid_shape = tuple(grid_shape)
        self.lm_dim = lm_dim
        self.sep_len = sep_len
        in_dim = enc_dim * grid_shape[1] if self.layout == "concat" else enc_dim
        hidden = conn_cfg.hidden_dim or lm_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, lm_dim))
        if conn_cfg.token_norm < 0:
            raise ValueError(f"connector.token_norm must be >= 0, got {conn_cfg.token_norm}")
        self.token_norm: nn.Module = nn.Identity()
        if conn_cfg.token_norm > 0:
            self.token_norm = nn.RMSNorm(lm_dim, eps=1e-6)
            nn.init.constant_(self.token_norm.weight, conn_cfg.token_norm / math.sqrt(lm_dim))
        self.register_buffer("separator", torch.zeros(0, lm_dim), persistent=False)

    @property
    def uses_separator(self) -> bool:
        return self.layout in ("time_major", "freq_major")

    def set_separator(self, sep_embeds: Tensor) -> None:
        """Fix the separator embeddings [S, lm_dim] used when `forward` gets none."""
        if sep_embeds.dim() != 2 or sep_embeds.shape[1] != self.lm_dim:
            raise ValueError(f"separator embeddings must be [num_tokens, {self.lm_dim}], got {tuple(sep_embeds.shape)}")
        self.separator = sep_embeds.detach().clone()
        self.sep_len = sep_embeds.shape[0]

    def num_tokens(self, t: int, f: int) -> int:
        """Audio tokens per clip for a T x F grid (separators included)."""
        if self.layout == "concat":
            return t
        if self.layout == "pool":
            return math.ceil(t / self.pool_time)
        groups, per_group = (t, f) if self.layout == "time_major" else (f, t)
        return groups * per_group + (groups - 1) * self.sep_len

    def layout_tokens(self, grid: Tensor) -> Tensor:
        """The layout's tokens before the MLP: [B, N', in_dim] (no separators)."""
        b, t, f, d = grid.shape
        if self.layout == "concat":
            return grid.reshape(b, t, f * d)
        if self.layout == "time_major":
            return grid.reshape(b, t * f, d)
        if self.layout == "freq_major":
            return grid.transpose(1, 2).reshape(b, f * t, d)
        pooled = grid.mean(dim=2)  # [B, T, D]
        n = math.ceil(t / self.pool_time)
        if n * self.pool_time != t:  # last window averages only the steps that exist
            counts = torch.full((n,), float(self.pool_time), device=grid.device, dtype=grid.dtype)
            counts[-1] = t - (n - 1) * self.pool_time
            padded = torch.cat([pooled, pooled.new_zeros(b, n * self.pool_time - t, d)], dim=1)
            return padded.reshape(b, n, self.pool_time, d).sum(2) / counts[:, None]
        return pooled.reshape(b, n, self.pool_time, d).mean(2)

    def forward(self, grid: Tensor, sep_embeds: Tensor | None = None) -> Tensor:
        """grid [B, T, F, D] -> audio tokens [B, num_tokens(T, F), lm_dim]."""
        if grid.dim() != 4:
            raise ValueError(f"connector input must be a [batch, T, F, dim] grid, got {tuple(grid.shape)}")
        b, t, f, _ = grid.shape
        if self.layout == "concat" and f != self.grid_shape[1]:
            raise ValueError(f"concat layout was built for F={self.grid_shape[1]} frequency patches, got F={f}")
        tokens = self.token_norm(self.mlp(self.layout_tokens(grid)))
        if not self.uses_separator:
            return tokens
        sep = self.separator if sep_embeds is None else sep_embeds
        if sep.numel() == 0:
            raise ValueError(f"layout {self.layout} needs separator embeddings: pass sep_embeds or call set_separator")
        if sep.dim() != 2 or sep.shape[1] != self.lm_dim:
            raise ValueError(f"separator embeddings must be [num_tokens, {self.lm_dim}], got {tuple(sep.shape)}")
        groups = t if self.layout == "time_major" else f
        tokens = tokens.reshape(b, groups, -1, self.lm_dim)
        seps = sep.to(tokens.dtype).expand(b, groups, -1, -1)
        out = torch.cat([tokens, seps], dim=2).reshape(b, -1, self.lm_dim)
        return out[:, : out.shape[1] - sep.shape[0]]  # no separator after the last group
