"""The Mamba-2 state-space-duality (SSD) scan in pure PyTorch: the CPU path and the reference math.

Recurrence, per batch b and head h (group g = h // (heads / groups)):

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t B_t^T        state: [headdim, d_state]
    y_t     = state_t C_t + D * x_t

`ssd_chunked` computes it in chunks as in the Mamba-2 paper: a masked quadratic ("attention") form
inside each chunk, one state per chunk, and the recurrence between chunks as one matrix product over
a decay matrix of chunk boundaries, so there is no Python loop over tokens or chunks and autograd
works. Its argument order mirrors mamba_ssm's `mamba_chunk_scan_combined`, so the mixer can call
either with the same arguments. `ssd_recurrent_ref` is the token-by-token reference the tests
compare it against.

This module must never import mamba_ssm or other GPU-only code, and never change the math to gain
speed without the reference test still passing at fp64 precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _discretize(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float]) -> Tensor:
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int, int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"x must be [batch, length, heads, headdim], got shape {tuple(x.shape)}")
    b, l, h, p = x.shape
    if B.dim() != 4 or B.shape[:2] != (b, l) or C.shape != B.shape:
        raise ValueError(f"B and C must be [batch, length, groups, d_state] matching x {tuple(x.shape)}; got B {tuple(B.shape)}, C {tuple(C.shape)}")
    g, n = B.shape[2], B.shape[3]
    if dt.shape != (b, l, h):
        raise ValueError(f"dt must be [batch, length, heads] = {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must be [heads] = ({h},), got {tuple(A.shape)}")
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    return b, l, h, p, g, n


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked SSD scan.

    x [b, l, h, p], dt [b, l, h] (raw, then `+ dt_bias` and softplus if asked), A [h] (negative),
    B and C [b, l, g, n], D [h] or [h, p], initial_state [b, h, p, n].
    Returns y [b, l, h, p] in x's dtype (and the final state [b, h, p, n] in the compute dtype,
    fp32 or fp64). Any length works: the tail is padded with dt = 0, which leaves the state unchanged.
    """
    b, l, h, p, g, n = _check_shapes(x, dt, A, B, C)
    out_dtype = x.dtype
    cdt = torch.promote_types(x.dtype, torch.float32)  # fp32 accumulation for bf16/fp16 inputs
    r = h // g
    q = chunk_size
    nc = max(1, -(-l // q))
    pad = nc * q - l

    dt = _discretize(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus, dt_limit)
    xf, Bf, Cf = x.to(cdt), B.to(cdt), C.to(cdt)
    if pad:
        xf = F.pad(xf, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        Bf = F.pad(Bf, (0, 0, 0, 0, 0, pad))
        Cf = F.pad(Cf, (0, 0, 0, 0, 0, pad))

    # Chunked views, heads split as (group, head-in-group) so B and C are never repeated per head.
    xc = xf.view(b, nc, q, g, r, p)
    Bc = Bf.view(b, nc, q, g, n)
    Cc = Cf.view(b, nc, q, g, n)
    dtc = dt.view(b, nc, q, g, r)
    dA = dtc * A.to(cdt).view(g, r)  # [b, c, q, g, r]
    cs = torch.cumsum(dA, dim=2)  # decay log from the chunk start, inclusive
    xdt = xc * dtc.unsqueeze(-1)  # [b, c, q, g, r, p]

    # 1. Within each chunk: y_t += sum_{s<=t} (C_t . B_s) exp(cs_t - cs_s) dt_s x_s.
    cs_t = cs.permute(0, 1, 3, 4, 2)  # [b, c, g, r, q]
    seg = cs_t.unsqueeze(-1) - cs_t.unsqueeze(-2)  # [b, c, g, r, t, s]
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal, float("-inf")))  # -inf before exp: no overflow above diagonal
    CB = torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc)  # [b, c, g, t, s]
    M = decay * CB.unsqueeze(3)
    y = torch.einsum("bcgrts,bcsgrp->bctgrp", M, xdt)

    # 2. State each chunk contributes at its end.
    to_end = torch.exp(cs[:, :, -1:] - cs)  # [b, c, q, g, r]
    states = torch.einsum("bcsgrp,bcsgn->bcgrpn", xdt * to_end.unsqueeze(-1), Bc)  # [b, c, g, r, p, n]

    # 3. Between chunks: state entering chunk c = sum_{z<c} exp(sum of chunk decays z+1..c-1) states_z,
    # computed for all c at once with a (nc+1) x (nc+1) decay matrix; slot 0 is the initial state.
    if initial_state is None:
        init = states.new_zeros(b, 1, g, r, p, n)
    else:
        if initial_state.shape != (b, h, p, n):
            raise ValueError(f"initial_state must be [batch, heads, headdim, d_state] = {(b, h, p, n)}, got {tuple(initial_state.shape)}")
        init = initial_state.to(cdt).view(b, 1, g, r, p, n)
    states = torch.cat([init, states], dim=1)  # [b, c+1, g, r, p, n]
    chunk_decay = F.pad(cs[:, :, -1], (0, 0, 0, 0, 1, 0))  # [b, c+1, g, r]
    ccs = torch.cumsum(chunk_decay, dim=1).permute(0, 2, 3, 1)  # [b, g, r, c+1]
    cseg = ccs.unsqueeze(-1) - ccs.unsqueeze(-2)  # [b, g, r, c+1 (to), c+1 (from)]
    ccausal = torch.ones(nc + 1, nc + 1, dtype=torch.bool, device=x.device).tril()
    cdecay = torch.exp(cseg.masked_fill(~ccausal, float("-inf")))
    entering = torch.einsum("bgrcz,bzgrpn->bcgrpn", cdecay, states)  # state after chunk c-1
    final_state = entering[:, -1]
    entering = entering[:, :-1]

    # 4. Contribution of the entering state to each position of the chunk.
    y_off = torch.einsum("bctgn,bcgrpn->bctgrp", Cc, entering)
    y = y + y_off * torch.exp(cs).unsqueeze(-1)

    y = y.reshape(b, nc * q, h, p)[:, :l]
    if D is not None:
        Dv = D.to(cdt)
        y = y + x.to(cdt) * (Dv.view(h, 1) if Dv.dim() == 1 else Dv)
    y = y.to(out_dtype)
    if return_final_state:
        return y, final_state.reshape(b, h, p, n)
    return y


def cpu_chunk_size(length: int) -> int:
    """Chunk length that is fastest for `ssd_chunked` on CPU (results do not depend on it).

    Work inside chunks grows with the chunk length and the between-chunk decay matrix with the
    square of the chunk count; on CPU, where every pass is memory bound, 32 tokens per chunk and at
    most ~64 chunks measured best.
    """
    q = 32
    while q * 64 < length:
        q *= 2
    return q


def ssd_recurrent_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Token-by-token reference of the same recurrence (slow; for tests and definitions)."""
    b, l, h, p, g, n = _check_shapes(x, dt, A, B, C)
    cdt = torch.promote_types(x.dtype, torch.float32)
    dt = _discretize(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus, dt_limit)
    rep = h // g
    Bh = B.to(cdt).repeat_interleave(rep, dim=2)  # [b, l, h, n]
    Ch = C.to(cdt).repeat_interleave(rep, dim=2)
    xf = x.to(cdt)
    state = x.new_zeros(b, h, p, n, dtype=cdt) if initial_state is None else initial_state.to(cdt).clone()
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A.to(cdt))  # [b, h]
        state = state * decay[:, :, None, None] + (dt[:, t, :, None] * xf[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(2)
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(b, 0, h, p)
    if D is not None:
        Dv = D.to(cdt)
        y = y + xf * (Dv.view(h, 1) if Dv.dim() == 1 else Dv)
    y = y.to(x.dtype)
    return (y, state) if return_final_state else y
