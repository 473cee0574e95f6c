"""SSM state-update distance: how far each audio token moves each Mamba-2 head's state, exactly.

Per layer, head and token t the Mamba-2 state h_t [headdim, d_state] follows
    h_t = a_t h_{t-1} + dt_t x_t B_t^T,   a_t = exp(dt_t A),  h_{-1} = 0.
We report d_t = ||h_t - h_{t-1}||_F, ||h_{t-1}||_F and their ratio without ever storing an h_t:
    ||dh_t||^2 = (a_t - 1)^2 ||h_{t-1}||^2 + 2 (a_t - 1) dt_t c_t + dt_t^2 ||x_t||^2 ||B_t||^2
    ||h_t||^2  = a_t^2 ||h_{t-1}||^2 + 2 a_t dt_t c_t + dt_t^2 ||x_t||^2 ||B_t||^2
with c_t = x_t^T h_{t-1} B_t, an SSD read-out of the previous state with C replaced by B. `update_stats`
computes c_t in chunks (a masked quadratic form inside a chunk plus one state per chunk, as in the
Mamba-2 SSD algorithm) and the scalar norm recurrence the same way, so extra memory is one layer's
chunk states; on float32 CUDA tensors it runs fused Triton kernels instead (`probes.triton_state`,
the same closed form with the chunk states kept on chip) when triton is installed.
`update_stats_ref` steps the recurrence token by token and is what the tests compare against.

x, B, dt come from the model itself: a forward hook on each mixer's `in_proj` (its output, so a
peft LoRA wrapper at that path is included) recomputes the causal conv1d, SiLU, the split into
x/B/C, dt = softplus(dt + dt_bias) (clamped to the mixer's dt limit) and A = -exp(A_log), and
applies the padding mask the mixer receives (transformers zeroes padded x and B). Packed sequences
(mamba_ssm `seq_idx`/`cu_seqlens`) are not supported. This module must never change a model's
outputs, import `sam` or `mamba_ssm`, or approximate the distances.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import SpanLike, call_model, mamba2_mixers, resolve_spans

COLUMNS = ["clip", "layer", "head", "position", "distance", "state_norm", "relative"]


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The probe's arithmetic when none is given: float64 on CPU, float32 on accelerators.

    float64 matches the token recurrence to ~1e-14 relative error and costs little on CPU. On an
    H100 (780m shape, 8,192 tokens, benchmarks/bench_state_update.py) float32 (IEEE matmuls, TF32
    off) took 17-26% less time, with relative errors against float64 of at most 2.7e-5 (median ~1e-7) on
    distances and norms over every layer, head and token.
    """
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def default_chunk_size(device: torch.device | str, backend: str = "torch") -> int:
    """Probe chunk length when none is given: 32 on CPU, 64 on accelerators (fastest measured on an H100).

    The Triton kernels take 32 (up to 32, ptxas fits them in sm_90 registers without spilling).
    """
    return 32 if torch.device(device).type == "cpu" or backend == "triton" else 64


@contextlib.contextmanager
def _ieee_matmul() -> Iterator[None]:
    """float32 matmuls in full precision (TF32 off) inside the probe, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _exp_safe(dtype: torch.dtype) -> float:
    """Log-decays above minus this keep exp(-Lambda) and exp(Lambda) clear of overflow and underflow."""
    return 0.8 * math.log(torch.finfo(dtype).max)


# ---------------------------------------------------------------------------------------------
# The mixer's SSM inputs, recomputed from its in_proj output


@dataclass(frozen=True)
class MixerShape:
    """The shape facts a Mamba-2 mixer needs, read under mamba_ssm's or transformers' names."""

    nheads: int
    headdim: int
    ngroups: int
    d_state: int
    d_conv: int
    conv_dim: int
    dt_limit: tuple[float, float]
    activation: str


def _attr(module: nn.Module, *names: str) -> Any:
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"{type(module).__name__} has none of the attributes {names}; is it a Mamba-2 mixer?")


def mixer_shape(mixer: nn.Module) -> MixerShape:
    """Shape of a Mamba-2 mixer (sam / mamba_ssm `Mamba2`, transformers `Mamba2Mixer`), checked for consistency."""
    nheads = mixer.A_log.numel()
    headdim = int(_attr(mixer, "headdim", "head_dim"))
    ngroups = int(_attr(mixer, "ngroups", "n_groups"))
    d_state = int(_attr(mixer, "d_state", "ssm_state_size"))
    conv_dim, _, d_conv = mixer.conv1d.weight.shape
    if conv_dim != nheads * headdim + 2 * ngroups * d_state:
        raise ValueError(
            f"{type(mixer).__name__}: conv1d has {conv_dim} channels but heads*headdim + 2*ngroups*d_state = "
            f"{nheads}*{headdim} + 2*{ngroups}*{d_state}; the mixer's attributes do not match its weights"
        )
    if nheads % ngroups:
        raise ValueError(f"{type(mixer).__name__}: {nheads} heads are not a multiple of {ngroups} groups")
    limit = tuple(float(v) for v in getattr(mixer, "dt_limit", getattr(mixer, "time_step_limit", (0.0, float("inf")))))
    activation = str(getattr(mixer, "activation", "silu"))
    if activation not in ("silu", "swish"):
        raise ValueError(f"{type(mixer).__name__}: conv activation {activation!r} is not supported (Mamba-2 uses silu)")
    return MixerShape(nheads, headdim, ngroups, d_state, int(d_conv), int(conv_dim), (limit[0], limit[1]), activation)


def ssm_inputs(
    mixer: nn.Module, zxbcdt: Tensor, mask: Tensor | None = None, dtype: torch.dtype = torch.float64, backend: str = "torch"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x [b,T,H,P], B [b,T,G,N], dt [b,T,H], A [H] from a mixer's in_proj output [b, T, d_in_proj].

    The in_proj output is [z0, x0, z, xBC, dt] (mamba_ssm; the first three may be empty) or
    [gate, xBC, dt] (transformers): xBC and dt are always its last conv_dim + nheads columns.
    `backend` as in `resolve_backend`: "triton" (float32 only) runs the conv and SiLU as one Triton
    kernel (`probes.triton_state.conv_silu_triton`) reading the in_proj output in place; "torch" as below.
    """
    shape = mixer_shape(mixer)
    if zxbcdt.dim() != 3:
        raise ValueError(f"in_proj output must be [batch, length, features], got {tuple(zxbcdt.shape)} (packed/flattened inputs are not supported)")
    b, T, width = zxbcdt.shape
    if width < shape.conv_dim + shape.nheads:
        raise ValueError(f"in_proj output has {width} features, fewer than conv_dim + nheads = {shape.conv_dim + shape.nheads}")
    h, p, g, n = shape.nheads, shape.headdim, shape.ngroups, shape.d_state
    lo, used = width - shape.conv_dim - h, h * p + g * n  # x and B channels; C is never needed
    dt = zxbcdt[..., width - h :].to(dtype)
    if mask is not None:
        mask = mask.to(dtype)[:, -T:]
    # sam's mixer zeroes padded xBC before the conv too; transformers only zeroes the mixer input,
    # so an in_proj bias still reaches its conv from padding.
    mask_input = not type(mixer).__module__.startswith("transformers.")
    weight = mixer.conv1d.weight.detach()[:used, 0]  # [used, d_conv]
    bias = mixer.conv1d.bias.detach()[:used] if mixer.conv1d.bias is not None else None
    if resolve_backend(backend, zxbcdt.device, dtype) == "triton":
        from .triton_state import conv_silu_triton

        xbc = conv_silu_triton(zxbcdt, lo, used, weight, bias, mask, mask_input)
    else:
        xbc = _conv_silu_torch(zxbcdt[..., lo : lo + used], weight.to(dtype), None if bias is None else bias.to(dtype), mask, mask_input, dtype)
    x, B = xbc[..., : h * p], xbc[..., h * p : h * p + g * n]
    dt = F.softplus(dt + mixer.dt_bias.detach().to(dtype))
    if shape.dt_limit != (0.0, float("inf")):
        dt = dt.clamp(min=shape.dt_limit[0], max=shape.dt_limit[1])
    A = -torch.exp(mixer.A_log.detach().to(dtype))
    return x.reshape(b, T, h, p), B.reshape(b, T, g, n), dt, A


def _conv_silu_torch(
    xbc_in: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None, mask_input: bool, dtype: torch.dtype
) -> Tensor:
    """Causal depthwise conv + SiLU of xbc_in [b, T, C] (weight [C, d_conv]) in `dtype`, masked like the mixer.

    Written as d_conv shifted multiply-adds over [b, T, channels] (float64 depthwise F.conv1d takes a
    slow path on CPU), reading the input in place (no zero-padded copy: the taps that would read the
    padding are simply not added for the first tokens).
    """
    b, T, used = xbc_in.shape
    k = weight.shape[-1]
    taps = weight.t().contiguous()  # [d_conv, C]: each tap a contiguous row (a strided one broadcasts ~3x slower on CPU)
    src = xbc_in.to(dtype)
    if mask is not None and mask_input:
        src = src * mask[..., None]
    out = src * taps[k - 1]  # tap k-1 reads x_t, tap j reads x_(t - (k-1-j))
    for j in range(k - 1):
        shift = k - 1 - j
        if shift < T:
            out[:, shift:].addcmul_(src[:, : T - shift], taps[j])
    if bias is not None:
        out += bias
    xbc = F.silu(out, inplace=True)
    if mask is not None:
        xbc *= mask[..., None]
    return xbc


# ---------------------------------------------------------------------------------------------
# The math: exact distances and norms from x, B, dt, A


def _check(x: Tensor, B: Tensor, dt: Tensor, A: Tensor) -> tuple[int, int, int, int, int, int]:
    if x.dim() != 4 or B.dim() != 4 or x.shape[:2] != B.shape[:2] or dt.shape != x.shape[:3] or A.shape != x.shape[2:3]:
        raise ValueError(
            f"expected x [b,T,H,P], B [b,T,G,N], dt [b,T,H], A [H]; got {tuple(x.shape)}, {tuple(B.shape)}, {tuple(dt.shape)}, {tuple(A.shape)}"
        )
    b, T, H, P = x.shape
    G, N = B.shape[2:]
    if H % G:
        raise ValueError(f"{H} heads are not a multiple of {G} groups")
    return b, T, H, P, G, N


def _finish(dist2: Tensor, prev_norm2: Tensor) -> tuple[Tensor, Tensor]:
    # Round-off can push an exact-zero square a few ulps below 0.
    return dist2.clamp_min(0).sqrt(), prev_norm2.clamp_min(0).sqrt()


def update_stats_ref(x: Tensor, B: Tensor, dt: Tensor, A: Tensor, return_state: bool = False) -> tuple[Tensor, ...]:
    """Token-by-token reference: (||h_t - h_{t-1}||_F, ||h_{t-1}||_F), each [b, T, H] (+ the final state [b, H, P, N])."""
    b, T, H, P, G, N = _check(x, B, dt, A)
    Bh = B.repeat_interleave(H // G, dim=2)
    state = x.new_zeros(b, H, P, N)
    dist, prev = x.new_zeros(b, T, H), x.new_zeros(b, T, H)
    for t in range(T):
        a = torch.exp(dt[:, t] * A)[..., None, None]
        new = a * state + dt[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :]
        dist[:, t] = torch.linalg.matrix_norm(new - state)
        prev[:, t] = torch.linalg.matrix_norm(state)
        state = new
    return (dist, prev, state) if return_state else (dist, prev)


def _scan_chunks(log_decay: Tensor, values: Tensor, block: int) -> Tensor:
    """starts_0 = 0, starts_{k+1} = exp(log_decay_k) starts_k + values_k, for log_decay [..., c] <= 0, values [..., c, F].

    `block` chunks at a time are solved as one masked matmul (weights exp of segment sums, each
    summed directly, so no difference of large cumulative sums loses precision); only the carry
    between blocks is sequential: c / block steps instead of c.
    """
    c = log_decay.shape[-1]
    starts = torch.empty_like(values)
    carry = torch.zeros_like(values[..., 0, :])
    for s in range(0, c, block):
        L, V = log_decay[..., s : s + block], values[..., s : s + block, :]
        K = L.shape[-1]
        lower = torch.ones(K, K, dtype=torch.bool, device=L.device).tril()
        # seg[k, j] = sum_{j < i <= k} L_i: the decay from the end of chunk j to the end of chunk k.
        seg = (L[..., :, None] * lower.tril(-1)).cumsum(-2)
        weights = torch.exp(seg) * lower
        ends = weights @ V + torch.exp(L.cumsum(-1))[..., None] * carry[..., None, :]  # state after chunk s + k
        starts[..., s, :] = carry
        starts[..., s + 1 : s + K, :] = ends[..., :-1, :]
        carry = ends[..., -1, :]
    return starts


BACKENDS = ("auto", "torch", "triton")
# tl.dot input precisions of the Triton kernels: IEEE float32, or Triton's 3-pass TF32 emulation of
# float32 on tensor cores (`probes.triton_state`). The PyTorch path ignores the choice.
TRITON_PRECISIONS = ("ieee", "tf32x3")
# The default: on an H100 (780m shape, 8,192 tokens) tf32x3 dots made forward + probe 19% faster
# than IEEE ones (158.1 vs 194.5 ms) with the same error against float64 (distances max 2.7e-6,
# median 8.6e-8 vs 8.3e-8; benchmarks/results/state_update_cuda_780m_triton_segments.md).
DEFAULT_TRITON_PRECISION = "tf32x3"


def check_triton_precision(precision: str) -> str:
    """`precision` if it is one of TRITON_PRECISIONS, else a ValueError naming the choices."""
    if precision not in TRITON_PRECISIONS:
        raise ValueError(f"triton_precision must be one of {TRITON_PRECISIONS}, got {precision!r}")
    return precision


def check_backend(backend: str) -> str:
    """`backend` if it is one of BACKENDS, else a ValueError naming the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """'torch' or 'triton' for tensors of this device and dtype.

    'auto' is the fused Triton kernels (`probes.triton_state`) for float32 CUDA tensors when triton
    imports, else PyTorch; 'triton' refuses, with the reason, what the kernels cannot run.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "torch" or (backend == "auto" and (device.type != "cuda" or dtype != torch.float32)):
        return "torch"
    from .triton_state import unavailable_reason

    reason = unavailable_reason(device, dtype)
    if reason and backend == "triton":
        raise RuntimeError(f"backend='triton': {reason}")
    return "torch" if reason else "triton"


def update_stats(
    x: Tensor, B: Tensor, dt: Tensor, A: Tensor, chunk_size: int = 32, scan_block: int | None = None, backend: str = "auto",
    triton_precision: str = DEFAULT_TRITON_PRECISION,
) -> tuple[Tensor, Tensor]:
    """Exact (||h_t - h_{t-1}||_F, ||h_{t-1}||_F), each [b, T, H], in chunks of `chunk_size` tokens.

    `backend` (see `resolve_backend`): 'triton' runs the fused kernels of `probes.triton_state`
    (float32; the per-chunk states stay on chip; `triton_precision`, one of TRITON_PRECISIONS and
    checked whatever the backend, is their matmuls' precision), 'torch' the PyTorch code below. On
    the PyTorch path work is about one SSD pass (batched matmuls over chunks); memory is O(b T H chunk_size)
    plus one [headdim, d_state] state per head and chunk. The states carried between chunks are
    solved `scan_block` chunks per step (default: 64 on GPUs, where each step's launches dominate;
    8 on CPU, where the block's matmul work does).
    """
    b, T, H, P, G, N = _check(x, B, dt, A)
    check_triton_precision(triton_precision)
    if resolve_backend(backend, x.device, x.dtype) == "triton":
        from .triton_state import update_stats_triton

        return update_stats_triton(x, B, dt, A, chunk_size, precision=triton_precision)
    scan_block = int(scan_block or (8 if x.device.type == "cpu" else 64))
    if scan_block < 1:
        raise ValueError(f"scan_block must be >= 1, got {scan_block}")
    R, Q = H // G, int(chunk_size)
    if Q < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    pad = (-T) % Q
    if pad:  # dt = 0 and x = 0 on padding: a = 1, no update; the tail is cut off below
        x, B, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
    c = (T + pad) // Q
    # Layouts (group g, chunk c outermost so every product below is a batched matmul):
    xs = x.reshape(b, c, Q, G, R, P).permute(0, 3, 1, 4, 2, 5).contiguous()  # [b,G,c,R,Q,P]
    xq = x.reshape(b, c, Q, G, R * P).permute(0, 3, 1, 2, 4).contiguous()  # [b,G,c,Q,R*P]
    Bs = B.reshape(b, c, Q, G, N).permute(0, 3, 1, 2, 4).contiguous()  # [b,G,c,Q,N]
    dts = dt.reshape(b, c, Q, G, R).permute(0, 3, 1, 4, 2)  # [b,G,c,R,Q]
    la = dts * A.reshape(1, G, 1, R, 1)  # log a_t
    cum = torch.cumsum(la, dim=-1)  # Lambda_t inside the chunk
    cum_prev = cum - la  # Lambda_{t-1}

    # c_t = x_t^T h_{t-1} B_t. Inside a chunk: sum_{s<t} exp(Lambda_{t-1} - Lambda_s) dt_s (x_t.x_s)(B_t.B_s).
    gram_x, gram_b = xs @ xs.transpose(-1, -2), Bs @ Bs.transpose(-1, -2)  # [b,G,c,R,Q,Q], [b,G,c,Q,Q]
    # dt^2 ||x_t||^2 ||B_t||^2, the update's own square, from the Gram diagonals
    sq_update = dts**2 * gram_x.diagonal(dim1=-2, dim2=-1) * gram_b.diagonal(dim1=-2, dim2=-1)[:, :, :, None]
    gram = gram_x * gram_b[:, :, :, None]
    del gram_x, gram_b
    # While exp(-2 Lambda) cannot overflow, the decay factors out of the sums (exp(Lambda_{t-1}) before,
    # exp(-Lambda_s) inside): no [Q, Q] decay matrix, and the norms below become a running sum.
    factored = float(cum.min()) > -_exp_safe(x.dtype) / 2
    if factored:
        inv = torch.exp(-cum)  # exp(-Lambda_s)
        cross = torch.exp(cum_prev) * (gram.tril_(-1) @ (inv * dts)[..., None])[..., 0]  # [b,G,c,R,Q]
    else:  # a chunk decays so far that exp(-Lambda_s) could overflow: the decay matrix, summed per entry
        above = torch.full((Q, Q), float("-inf"), dtype=x.dtype, device=x.device).triu()  # s >= t: no term
        decay = torch.exp(cum_prev[..., :, None] - cum[..., None, :] + above)
        cross = ((gram * decay) @ dts[..., None])[..., 0]
    del gram

    # Plus the state carried in from earlier chunks: exp(Lambda_{t-1}) x_t^T S_c B_t.
    to_end = (torch.exp(cum[..., -1:] - cum) * dts).transpose(-1, -2)  # [b,G,c,Q,R]
    local = (xq.view(b, G, c, Q, R, P) * to_end[..., None]).view(b, G, c, Q, R * P).transpose(-1, -2) @ Bs  # [b,G,c,RP,N]
    log_chunk = cum[..., -1].transpose(-1, -2)  # [b,G,R,c]: log decay over each whole chunk
    per_head = local.view(b, G, c, R, P * N).transpose(2, 3)  # [b,G,R,c,P*N]
    starts = _scan_chunks(log_chunk, per_head, scan_block).transpose(2, 3).reshape(b, G, c, R * P, N)
    del local, per_head
    read = (Bs @ starts.transpose(-1, -2)) * xq  # [b,G,c,Q,RP]: (S_c B_t) * x_t
    cross = cross + torch.exp(cum_prev) * read.view(b, G, c, Q, R, P).sum(-1).transpose(-1, -2)
    del read, starts

    # ||h_t||^2 = a_t^2 ||h_{t-1}||^2 + beta_t, solved the same way with decay a^2:
    # sum_{s<=t} exp(2 (Lambda_t - Lambda_s)) beta_s = a_t^2 sum_{s<t} decay_ts^2 beta_s + beta_t.
    a = torch.exp(la)
    beta = 2 * a * dts * cross + sq_update
    if factored:  # sum_{s<t} exp(2 (Lambda_t - Lambda_s)) beta_s = exp(2 Lambda_t) (exclusive running sum of exp(-2 Lambda_s) beta_s)
        weighted = inv * inv * beta
        before = F.pad(torch.cumsum(weighted[..., :-1], dim=-1), (1, 0))
        norm2 = torch.exp(2 * cum) * before + beta  # [b,G,c,R,Q]
        del weighted, before
    else:
        norm2 = a**2 * ((decay * decay) @ beta[..., None])[..., 0] + beta
        del decay
    start_norm2 = _scan_chunks(2 * log_chunk, norm2[..., -1].transpose(-1, -2)[..., None], scan_block)[..., 0].transpose(-1, -2)  # [b,G,c,R]
    norm2 = norm2 + torch.exp(2 * cum) * start_norm2[..., None]

    def tokens(v: Tensor) -> Tensor:  # [b,G,c,R,Q] -> [b,T,H]
        return v.permute(0, 2, 4, 1, 3).reshape(b, c * Q, H)[:, :T]

    norm2 = tokens(norm2)
    prev_norm2 = torch.cat([norm2.new_zeros(b, 1, H), norm2[:, :-1]], 1)
    am1, dtf = tokens(torch.expm1(la)), tokens(dts)
    dist2 = am1**2 * prev_norm2 + 2 * am1 * dtf * tokens(cross) + tokens(sq_update)
    return _finish(dist2, prev_norm2)


# ---------------------------------------------------------------------------------------------
# Running a model


@dataclass
class StateUpdates:
    """Per-layer [batch, T, heads] distances and previous-state norms, plus the [batch, 2] spans."""

    distance: dict[int, Tensor]
    state_norm: dict[int, Tensor]
    spans: Tensor
    output: Any = None

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows (clip, layer, head, position, distance, state_norm, relative), one per adjacent token pair of a span.

        `position` counts from the span start; rows have position >= 1 (token t and t - 1 both in
        the span), so the first span token, whose previous state is the one before the span, never
        appears.
        """
        frames = []
        for layer, dist in self.distance.items():
            dist, norm = dist.double().cpu().numpy(), self.state_norm[layer].double().cpu().numpy()
            heads = dist.shape[2]
            for clip, (start, end) in enumerate(self.spans.tolist()):
                first = start + 1
                if end <= first:
                    continue
                d, s = dist[clip, first:end], norm[clip, first:end]  # [len, H]
                positions = np.arange(first, end) - start
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel = np.where(s > 0, d / np.where(s > 0, s, 1.0), np.nan)
                frames.append(
                    pd.DataFrame(
                        {
                            "clip": clip,
                            "layer": layer,
                            "head": np.tile(np.arange(heads), len(positions)),
                            "position": np.repeat(positions, heads),
                            "distance": d.reshape(-1),
                            "state_norm": s.reshape(-1),
                            "relative": rel.reshape(-1),
                        }
                    )
                )
        if not frames:
            return pd.DataFrame({k: pd.Series(dtype=float if k in ("distance", "state_norm", "relative") else int) for k in COLUMNS})
        return pd.concat(frames, ignore_index=True)[COLUMNS]


def state_updates(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[int] | None = None,
    span: SpanLike = None,
    *,
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    reference: bool = False,
    backend: str = "auto",
    triton_precision: str = DEFAULT_TRITON_PRECISION,
    overlap: bool = True,
) -> StateUpdates:
    """Run `model` once on `inputs` and compute per-layer state-update tensors inside the hooks.

    Each layer's numbers are computed as its in_proj fires, so only [batch, T, heads] results are
    kept. On CUDA, with `overlap` (the default), each layer's probe runs on a side stream while the
    forward goes on to the next layers (the probe kernels are small and leave the GPU room); the
    side stream may lag at most OVERLAP_LAYERS layers behind, so at most that many in_proj outputs
    are held for it, and the results are complete when this returns. `overlap=False` (and CPU
    tensors, and `reference=True`) compute each layer inline.

    `dtype` is the probe's arithmetic and `chunk_size` its chunk length; None means `default_dtype`
    / `default_chunk_size` of the layer's device and backend (float64 and 32 tokens on CPU, float32
    and 64 tokens on GPUs, 32 through the Triton kernels). `backend` picks the
    closed form's implementation (`resolve_backend`: by default the fused Triton kernels for float32
    on CUDA when triton imports, else PyTorch); `triton_precision` is the kernels' matmul precision
    ("tf32x3", the default: 3-pass TF32 on tensor cores, or "ieee" float32; see `update_stats`). `reference=True`
    uses the token-by-token recurrence (slow; for tests).
    """
    check_backend(backend)  # before the forward, not inside its first hook
    check_triton_precision(triton_precision)
    mixers = mamba2_mixers(model, layers)
    masks: dict[int, Tensor | None] = {}
    distance: dict[int, Tensor] = {}
    state_norm: dict[int, Tensor] = {}
    seq: dict[str, int] = {}
    handles = []

    def capture_mask(layer: int):
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            try:
                mask = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments.get("attention_mask")
            except TypeError:
                mask = kwargs.get("attention_mask")
            masks[layer] = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None

        return pre_hook

    side = _SideStream() if overlap and not reference else None

    def compute(layer: int, mixer: nn.Module):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if layer in distance:
                raise RuntimeError(f"layer {layer}'s in_proj ran twice in one forward; state distances need one full-sequence forward (no step decoding)")
            zxbcdt, mask = output.detach(), masks.get(layer)
            with side.run(zxbcdt, mask) if side and zxbcdt.is_cuda else contextlib.nullcontext():
                with torch.no_grad(), torch.autocast(output.device.type, enabled=False), _ieee_matmul():
                    dt_probe = dtype or default_dtype(output.device)
                    use = "torch" if reference else resolve_backend(backend, output.device, dt_probe)
                    x, B, dt, A = ssm_inputs(mixer, zxbcdt, mask, dt_probe, backend=use)
                    if reference:
                        d, s = update_stats_ref(x, B, dt, A)
                    else:
                        d, s = update_stats(
                            x, B, dt, A, chunk_size or default_chunk_size(x.device, use), backend=use, triton_precision=triton_precision
                        )
            distance[layer], state_norm[layer] = d, s
            seq["batch"], seq["length"] = output.shape[0], output.shape[1]

        return hook

    try:
        for layer, _, mixer in mixers:
            handles.append(mixer.register_forward_pre_hook(capture_mask(layer), with_kwargs=True))
            handles.append(mixer.in_proj.register_forward_hook(compute(layer, mixer)))
        with torch.no_grad():
            output = call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
        if side:
            side.join()
    missing = [layer for layer, _, _ in mixers if layer not in distance]
    if missing:
        raise RuntimeError(f"the forward pass never called in_proj of layers {missing}; cannot compute their state updates")
    spans = resolve_spans(model, inputs, span, seq["batch"], seq["length"])
    return StateUpdates(distance, state_norm, spans, output)


# Layers the overlapped probe stream may fall behind the forward (each holds one in_proj output).
OVERLAP_LAYERS = 2


class _SideStream:
    """Runs each layer's probe on one CUDA side stream, overlapping the forward's next layers.

    `run(*tensors)` is a context in which work is queued on the side stream after everything the
    forward has queued so far; the tensors (made on the forward's stream) are kept from reuse
    until the side stream is done with them. Before queuing a layer, the forward's stream waits for
    the layer OVERLAP_LAYERS back, which bounds the memory held. `join()` makes the forward's
    stream wait for all of it.
    """

    def __init__(self) -> None:
        self.stream: torch.cuda.Stream | None = None
        self.main: torch.cuda.Stream | None = None
        self.pending: list[torch.cuda.Event] = []

    @contextlib.contextmanager
    def run(self, *tensors: Tensor | None) -> Iterator[None]:
        main = torch.cuda.current_stream(tensors[0].device)
        if self.stream is None:
            self.stream, self.main = torch.cuda.Stream(tensors[0].device), main
        while len(self.pending) >= OVERLAP_LAYERS:
            main.wait_event(self.pending.pop(0))
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            yield
            done = torch.cuda.Event()
            done.record(self.stream)
        for t in tensors:
            if t is not None and t.is_cuda:
                t.record_stream(self.stream)
        self.pending.append(done)

    def join(self) -> None:
        if self.stream is not None:
            self.main.wait_stream(self.stream)
            self.pending.clear()


def state_update_distance(
    model: nn.Module, inputs: Any, layers: Sequence[int] | None = None, span: SpanLike = None, *,
    dtype: torch.dtype | None = None, chunk_size: int | None = None, backend: str = "auto", triton_precision: str = DEFAULT_TRITON_PRECISION,
    overlap: bool = True,
) -> pd.DataFrame:
    """Exact state-update distances of every (selected) Mamba-2 layer, head and audio token, tidy.

    Columns: clip, layer, head, position, distance = ||h_t - h_{t-1}||_F, state_norm = ||h_{t-1}||_F,
    relative = distance / state_norm (NaN where the previous state is 0). Rows cover t >= 1 inside
    each sequence's span (`span`, else `model.audio_span(inputs)`, else the attention mask's
    non-padding region, else the whole sequence); `position` counts from the span start.
    Arithmetic: `dtype`, else float64 on CPU and float32 on GPUs (`default_dtype`; float32 stays
    within ~3e-5 relative error of float64, measured). `backend`, `triton_precision`, `overlap`: see `state_updates`.
    """
    return state_updates(
        model, inputs, layers, span, dtype=dtype, chunk_size=chunk_size, backend=backend, triton_precision=triton_precision,
        overlap=overlap,
    ).to_frame()


def state_update_distance_ref(model: nn.Module, inputs: Any, layers: Sequence[int] | None = None, span: SpanLike = None) -> pd.DataFrame:
    """`state_update_distance` through the token-by-token recurrence in float64 (slow; the test reference)."""
    return state_updates(model, inputs, layers, span, dtype=torch.float64, reference=True).to_frame()
