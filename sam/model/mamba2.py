"""The Mamba-2 mixer (one SSM layer) with mamba_ssm's parameterization, plus gated RMSNorm.

Parameter names and shapes are those of mamba_ssm's `Mamba2` (in_proj, conv1d, dt_bias, A_log, D,
norm.weight, out_proj), so published checkpoints load unchanged. The in_proj output is split as
[z, x, B, C, dt]. The forward pass runs the pure-PyTorch chunked scan of `sam.model.ssd`, or, on CUDA when
mamba_ssm imports, its Triton kernels (and causal_conv1d's conv when installed). `SAM_KERNELS=torch`
in the environment (or `Mamba2Mixer.kernels = "torch"`) forces the PyTorch path everywhere.

Rules this module keeps: mamba_ssm is imported lazily inside `_kernels()`, never at module import
(on CPU machines it must not be touched); `in_proj` and `out_proj` are always called as modules,
never through their weights, so peft LoRA wrappers and forward hooks see every call.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam.config import ConfigError, MambaConfig
from sam.model.ssd import CPU_CHUNK_SIZE, ssd_chunked


def check_config(cfg: MambaConfig) -> None:
    """Raise ConfigError naming the field when a MambaConfig cannot describe a Mamba-2 LM."""
    for name in (
        "d_model",
        "n_layer",
        "vocab_size",
        "d_state",
        "d_conv",
        "expand",
        "headdim",
        "ngroups",
        "chunk_size",
        "pad_vocab_size_multiple",
    ):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"lm.{name} must be a positive integer, got {v!r}")
    d_inner = cfg.d_model * cfg.expand
    if d_inner % cfg.headdim:
        raise ConfigError(
            f"lm.d_model * lm.expand (= {cfg.d_model} * {cfg.expand} = {d_inner}) must be divisible by lm.headdim (= {cfg.headdim})"
        )
    nheads = d_inner // cfg.headdim
    if nheads % cfg.ngroups:
        raise ConfigError(
            f"number of heads (lm.d_model * lm.expand / lm.headdim = {nheads}) must be divisible by lm.ngroups (= {cfg.ngroups})"
        )
    if not cfg.rms_norm:
        raise ConfigError("lm.rms_norm=false (LayerNorm blocks) is not supported; Mamba-2 checkpoints use RMSNorm")
    if not cfg.norm_epsilon > 0:
        raise ConfigError(f"lm.norm_epsilon must be > 0, got {cfg.norm_epsilon!r}")


# --------------------------------------------------------------------------------------------
# Optional GPU kernels


@dataclass
class _Kernels:
    chunk_scan: Any = None  # mamba_ssm mamba_chunk_scan_combined
    split_conv1d_scan: Any = None  # mamba_ssm mamba_split_conv1d_scan_combined (needs causal_conv1d)
    rmsnorm_gated: Any = None  # mamba_ssm layernorm_gated.rmsnorm_fn
    conv1d: Any = None  # causal_conv1d.causal_conv1d_fn
    error: str = ""


_KERNELS: _Kernels | None = None


def _kernels() -> _Kernels:
    """Import mamba_ssm's Mamba-2 Triton kernels once; an empty _Kernels (with .error) if unavailable."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    k = _Kernels()
    if importlib.util.find_spec("mamba_ssm") is None:
        _KERNELS = _Kernels(error="mamba_ssm is not installed")
        return _KERNELS
    try:
        # mamba_ssm 2.3.x's package __init__ imports the Mamba-1 CUDA extension unconditionally; a
        # Triton-only install lacks it. Mamba-2 never calls it, so an empty stand-in lets the import run.
        if importlib.util.find_spec("selective_scan_cuda") is None and "selective_scan_cuda" not in sys.modules:
            sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
        ssd = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        k.chunk_scan = ssd.mamba_chunk_scan_combined
        k.rmsnorm_gated = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated").rmsnorm_fn
        if getattr(ssd, "causal_conv1d_fwd_function", None) is not None:
            k.split_conv1d_scan = ssd.mamba_split_conv1d_scan_combined
    except Exception as e:  # any import failure means: use the PyTorch path
        k = _Kernels(error=f"{type(e).__name__}: {e}")
    try:
        k.conv1d = importlib.import_module("causal_conv1d").causal_conv1d_fn
    except Exception:
        k.conv1d = None
    _KERNELS = k
    return k


_KERNEL_FUNCTIONS = ("chunk_scan", "split_conv1d_scan", "rmsnorm_gated", "conv1d")


def opaque_kernels(on: bool = True) -> None:
    """Hide mamba_ssm's kernels from torch.compile (on=True) or let Dynamo trace into them (False).

    Opaque, each kernel call is a graph break: it runs eagerly, as its own autograd.Function,
    between the compiled regions (`sam.train.compile_blocks` does this). Eager runs are unaffected
    either way. The wrapped functions stay on `_kernels()` until `opaque_kernels(False)` puts the
    originals back (`sam.train.uncompile_blocks` does); each remembers its original.
    """
    k = _kernels()
    for name in _KERNEL_FUNCTIONS:
        fn = getattr(k, name)
        if fn is None:
            continue
        raw = getattr(fn, "_sam_raw", fn)
        if on and fn is raw:
            wrapped = torch.compiler.disable(raw)
            wrapped._sam_raw = raw  # type: ignore[attr-defined]
            setattr(k, name, wrapped)
        elif not on:
            setattr(k, name, raw)


def set_ssd_chunk_size(module: nn.Module, chunk: int) -> None:
    """Run every Mamba-2 mixer inside `module` with SSD chunks of `chunk` tokens (0: each mixer's
    default again). A speed setting: the chunked scan is exact for any chunk length, and the
    mixers' `chunk_size` (their config, saved with the model) is left alone."""
    for m in module.modules():
        if isinstance(m, Mamba2Mixer):
            if chunk:
                m.ssd_chunk_size = chunk
            else:
                vars(m).pop("ssd_chunk_size", None)


def kernel_mode() -> str:
    """'torch' when forced by SAM_KERNELS=torch, else 'auto'."""
    mode = os.environ.get("SAM_KERNELS", "auto").strip().lower()
    if mode not in ("auto", "torch", "triton"):
        raise ConfigError(f"SAM_KERNELS must be auto, torch or triton, got {mode!r}")
    return mode


# --------------------------------------------------------------------------------------------
# Causal depthwise convolution (PyTorch path)


class _CausalConvSiLU(torch.autograd.Function):
    """silu(bias + sum_i xp[:, t + i] * w[:, i]) with xp = [prefix or zeros (K - 1 steps), x].

    x [B, L, D], w [D, K], prefix [B, K - 1, D] or None (a decoding cache; gets no gradient). The
    [B, L, D] layout needs no transposes, and the hand-written backward avoids the zero-filled
    slice gradients autograd would allocate per tap; on CPU this is several times faster (forward +
    backward) than a depthwise F.conv1d. Tested against F.conv1d.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, bias: Tensor, prefix: Tensor | None) -> Tensor:
        K, L = w.shape[1], x.shape[1]
        cdt = torch.promote_types(x.dtype, torch.float32)  # bf16 inputs accumulate in fp32
        wt = w.t().to(cdt).contiguous()  # [K, D]: contiguous taps broadcast ~4x faster than strided columns
        head = prefix.to(x.dtype) if prefix is not None else x.new_zeros(x.shape[0], K - 1, x.shape[2])
        xp = torch.cat([head, x], dim=1)
        pre = torch.addcmul(bias.to(cdt), xp[:, :L], wt[0])
        for i in range(1, K):
            pre.addcmul_(xp[:, i : i + L], wt[i])
        ctx.save_for_backward(xp, wt, pre)
        ctx.dtypes = (x.dtype, w.dtype, bias.dtype)
        # Always a fresh tensor: where `.to(x.dtype)` would return F.silu's own output, torch.compile
        # gives this Function zero gradients in fp32 (tests/test_gpu.py checks compiled against eager).
        return F.silu(pre).to(x.dtype, copy=True)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        xp, wt, pre = ctx.saved_tensors
        K, L, D = wt.shape[0], pre.shape[1], pre.shape[2]
        g = torch.ops.aten.silu_backward(grad.to(pre.dtype), pre)
        # x_s feeds outputs t = s + K - 1 - i through tap i.
        dx = g * wt[K - 1]
        for j in range(1, min(K, L + 1)):
            dx[:, : L - j].addcmul_(g[:, j:], wt[K - 1 - j])
        dw = torch.stack([(g * xp[:, i : i + L]).reshape(-1, D).sum(0) for i in range(K)], dim=1)
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        return dx.to(x_dtype), dw.to(w_dtype), g.reshape(-1, D).sum(0).to(b_dtype), None


# --------------------------------------------------------------------------------------------
# Norms


class RMSNorm(nn.Module):
    """RMSNorm computed in (at least) fp32, output in the input dtype (as mamba_ssm and transformers do)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: Tensor) -> Tensor:
        cdt = torch.promote_types(x.dtype, torch.float32)
        y = F.rms_norm(x.to(cdt), (x.shape[-1],), None, self.eps)
        return (y * self.weight.to(cdt)).to(x.dtype)


class RMSNormGated(nn.Module):
    """norm(x * silu(z)) * weight, normalized within each of `ngroups` equal groups of channels."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        dtype = x.dtype
        cdt = torch.promote_types(dtype, torch.float32)
        h = x.to(cdt) * F.silu(z.to(cdt))
        shape = h.shape
        h = h.view(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        h = F.rms_norm(h, (self.group_size,), None, self.eps).view(shape)
        return (h * self.weight.to(cdt)).to(dtype)


# --------------------------------------------------------------------------------------------
# Decoding cache


@dataclass
class MambaCache:
    """Per-layer decoding state: conv inputs [B, conv_dim, d_conv] and SSM states [B, h, p, n] (fp32)."""

    conv_states: list[Tensor] = field(default_factory=list)
    ssm_states: list[Tensor] = field(default_factory=list)
    seqlen_offset: int = 0

    def reorder(self, index: Tensor) -> None:
        """Keep/reorder batch rows (e.g. beam search or dropping finished sequences)."""
        self.conv_states = [s.index_select(0, index) for s in self.conv_states]
        self.ssm_states = [s.index_select(0, index) for s in self.ssm_states]


# --------------------------------------------------------------------------------------------
# The mixer


class Mamba2Mixer(nn.Module):
    """Mamba-2 SSM layer: in_proj -> causal depthwise conv + SiLU on xBC -> SSD scan -> gated RMSNorm -> out_proj."""

    kernels: str = ""  # "" -> SAM_KERNELS env; "torch" forces the PyTorch path on this instance
    # SSD chunk length at run time, on every path (`set_ssd_chunk_size`; the trainer's
    # train.ssd_chunk_size). 0: `chunk_size` on CUDA, CPU_CHUNK_SIZE on the CPU PyTorch path. The
    # scan is exact for any chunk length, so this changes speed and float rounding only.
    ssd_chunk_size: int = 0

    def __init__(self, config: MambaConfig, layer_idx: int = 0) -> None:
        super().__init__()
        check_config(config)
        self.layer_idx = layer_idx
        self.d_model = config.d_model
        self.d_state = config.d_state
        self.d_conv = config.d_conv
        self.headdim = config.headdim
        self.ngroups = config.ngroups
        self.chunk_size = config.chunk_size
        self.d_inner = config.expand * config.d_model
        self.nheads = self.d_inner // self.headdim
        self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state

        self.in_proj = nn.Linear(self.d_model, 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, kernel_size=self.d_conv, groups=self.conv_dim, padding=self.d_conv - 1, bias=True
        )
        # mamba_ssm's initialization: dt log-uniform in [1e-3, 0.1] stored as inverse softplus, A in [1, 16].
        dt = torch.exp(torch.rand(self.nheads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.norm = RMSNormGated(self.d_inner, group_size=self.d_inner // self.ngroups, eps=config.norm_epsilon)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=False)

    # ---- helpers -------------------------------------------------------------------------

    def _use_kernels(self, x: Tensor) -> _Kernels | None:
        mode = self.kernels or kernel_mode()
        if mode == "torch" or not x.is_cuda:
            if mode == "triton" and not x.is_cuda:
                raise RuntimeError("SAM_KERNELS=triton needs CUDA tensors")
            return None
        k = _kernels()
        if k.chunk_scan is None:
            if mode == "triton":
                raise RuntimeError(f"SAM_KERNELS=triton but mamba_ssm's kernels did not import ({k.error})")
            return None
        return k

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)  # type: ignore[return-value]

    def _conv(self, xBC: Tensor, k: _Kernels | None, prefix: Tensor | None) -> Tensor:
        """Causal depthwise conv + SiLU over [B, L, conv_dim]; `prefix` = the d_conv-1 earlier inputs."""
        w = self.conv1d.weight.squeeze(1)  # [conv_dim, d_conv]
        if k is not None and k.conv1d is not None and prefix is None:
            return k.conv1d(xBC.transpose(1, 2), w, self.conv1d.bias, activation="silu").transpose(1, 2)
        pre = None if prefix is None else prefix.transpose(1, 2)
        return _CausalConvSiLU.apply(xBC, w, self.conv1d.bias, pre)

    # ---- parallel forward ----------------------------------------------------------------

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, cache: MambaCache | None = None) -> Tensor:
        """hidden_states [B, L, d_model] -> [B, L, d_model].

        attention_mask [B, L] (1 real, 0 pad): padded positions contribute nothing to the state, so
        a left-padded sequence gives the unpadded outputs at its real positions. With `cache`, the
        scan starts from the cached states and the cache is advanced past these L tokens.
        """
        bsz, L, _ = hidden_states.shape
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (bsz, L):
                raise ValueError(f"attention_mask must be [batch, length] = {(bsz, L)}, got {tuple(attention_mask.shape)}")
            mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
            hidden_states = hidden_states * mask
        k = self._use_kernels(hidden_states)
        zxbcdt = self.in_proj(hidden_states)
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

        if k is not None and k.split_conv1d_scan is not None and mask is None and cache is None:
            y = k.split_conv1d_scan(
                zxbcdt,
                self.conv1d.weight.squeeze(1),
                self.conv1d.bias,
                self.dt_bias,
                A,
                D=self.D,
                chunk_size=self.ssd_chunk_size or self.chunk_size,
                activation="silu",
                rmsnorm_weight=self.norm.weight,
                rmsnorm_eps=self.norm.eps,
                outproj_weight=None,
                outproj_bias=None,
                headdim=self.headdim,
                ngroups=self.ngroups,
                norm_before_gate=False,
            )
            return self.out_proj(y)

        z, xBC, dt = self._split(zxbcdt)
        if mask is not None:
            xBC = xBC * mask.to(xBC.dtype)  # in_proj biases (if any) must not leak from padding into the conv
        prefix = None
        if cache is not None:
            conv_state = cache.conv_states[self.layer_idx]
            if cache.seqlen_offset > 0:
                prefix = conv_state[..., 1:].clone()  # conv_state is overwritten just below
            xt = torch.cat([conv_state.to(xBC.dtype), xBC.transpose(1, 2)], dim=-1)
            conv_state.copy_(xt[..., -self.d_conv :])
        xBC = self._conv(xBC, k, prefix)
        if mask is not None:
            xBC = xBC * mask.to(xBC.dtype)  # keep the autocast dtype (kernels want one dtype)
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.reshape(bsz, L, self.nheads, self.headdim)
        B = B.reshape(bsz, L, self.ngroups, self.d_state)
        C = C.reshape(bsz, L, self.ngroups, self.d_state)
        init = cache.ssm_states[self.layer_idx] if cache is not None and cache.seqlen_offset > 0 else None
        want_state = cache is not None
        if k is not None:
            res = k.chunk_scan(
                x,
                dt,
                A,
                B,
                C,
                self.ssd_chunk_size or self.chunk_size,
                D=self.D,
                z=None,
                dt_bias=self.dt_bias,
                initial_states=init,
                dt_softplus=True,
                return_final_states=want_state,
            )
        else:
            chunk = self.ssd_chunk_size or (self.chunk_size if x.is_cuda else CPU_CHUNK_SIZE)
            res = ssd_chunked(
                x, dt, A, B, C, chunk, D=self.D, dt_bias=self.dt_bias, initial_state=init, dt_softplus=True, return_final_state=want_state
            )
        if want_state:
            y, final = res
            cache.ssm_states[self.layer_idx].copy_(final)  # type: ignore[union-attr]
        else:
            y = res
        y = y.reshape(bsz, L, self.d_inner)
        if k is not None and k.rmsnorm_gated is not None:
            y = k.rmsnorm_gated(y, self.norm.weight, None, z=z, eps=self.norm.eps, group_size=self.norm.group_size, norm_before_gate=False)
        else:
            y = self.norm(y, z)
        return self.out_proj(y)

    # ---- single-token step -----------------------------------------------------------------

    def allocate_cache(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        device = device if device is not None else self.in_proj.weight.device
        dtype = dtype if dtype is not None else self.conv1d.weight.dtype
        conv = torch.zeros(batch_size, self.conv_dim, self.d_conv, dtype=dtype, device=device)
        # SSM states accumulate over the whole sequence: keep them in at least fp32.
        ssm = torch.zeros(
            batch_size, self.nheads, self.headdim, self.d_state, dtype=torch.promote_types(dtype, torch.float32), device=device
        )
        return conv, ssm

    def step(self, hidden_states: Tensor, cache: MambaCache) -> Tensor:
        """One token: hidden_states [B, d_model] -> [B, d_model]; updates this layer's cache in place."""
        if hidden_states.dim() != 2:
            raise ValueError(f"step takes one token per sequence, [batch, d_model]; got shape {tuple(hidden_states.shape)}")
        bsz = hidden_states.shape[0]
        z, xBC, dt = self._split(self.in_proj(hidden_states))
        conv_state = cache.conv_states[self.layer_idx]
        conv_state.copy_(torch.cat([conv_state[..., 1:], xBC.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
        w = self.conv1d.weight.squeeze(1)
        xBC = F.silu((conv_state.to(w.dtype) * w).sum(-1) + self.conv1d.bias).to(z.dtype)
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        r = self.nheads // self.ngroups
        state = cache.ssm_states[self.layer_idx].view(bsz, self.ngroups, r, self.headdim, self.d_state)
        cdt = state.dtype
        xf = x.to(cdt).view(bsz, self.ngroups, r, self.headdim)
        Bf = B.to(cdt).view(bsz, self.ngroups, 1, 1, self.d_state)
        Cf = C.to(cdt).view(bsz, self.ngroups, self.d_state)
        dt = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt)).view(bsz, self.ngroups, r)
        dA = torch.exp(dt * -torch.exp(self.A_log.to(cdt)).view(self.ngroups, r))
        new = state * dA[..., None, None] + (dt[..., None] * xf).unsqueeze(-1) * Bf
        state.copy_(new)
        y = torch.einsum("bgrpn,bgn->bgrp", new, Cf) + xf * self.D.to(cdt).view(self.ngroups, r, 1)
        y = self.norm(y.reshape(bsz, self.d_inner).to(z.dtype), z)
        return self.out_proj(y)
