"""The Mamba-2 state-space-duality (SSD) scan in pure PyTorch: the CPU path and the reference math.

Recurrence, per batch b and head h (group g = h // (heads / groups)):

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t B_t^T        state: [headdim, d_state]
    y_t     = state_t C_t + D * x_t

`ssd_chunked` computes it in chunks as in the Mamba-2 paper: a masked quadratic ("attention") form
inside each chunk, one state per chunk, and the recurrence between chunks as a loop over chunks
(never over tokens). Its backward is written out by hand (`_ChunkedScan`), which saves about half
the memory autograd would and is faster on CPU. Its argument order mirrors mamba_ssm's
`mamba_chunk_scan_combined`, so the mixer can call either with the same arguments.
`ssd_recurrent_ref` is the token-by-token reference the tests compare values and gradients against.

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
        raise ValueError(
            f"B and C must be [batch, length, groups, d_state] matching x {tuple(x.shape)}; got B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    g, n = B.shape[2], B.shape[3]
    if dt.shape != (b, l, h):
        raise ValueError(f"dt must be [batch, length, heads] = {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must be [heads] = ({h},), got {tuple(A.shape)}")
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    return b, l, h, p, g, n


# Largest |decay log - chunk centre| for which exp(+-) of it is safe and exact enough to factor the
# within-chunk decay (far inside the exponent range: fp32 overflows at 88, fp64 at 709).
_FACTOR_LIMIT = {torch.float32: 60.0, torch.float64: 300.0}


def _causal(t: Tensor) -> Tensor:
    """Lower-triangular (s <= t) mask for a [..., T, T] tensor."""
    T = t.shape[-1]
    return torch.ones(T, T, dtype=torch.bool, device=t.device).tril()


def _segsum_exp(cs: Tensor) -> Tensor:
    """exp(cs[..., t] - cs[..., s]) for s <= t, else 0: [..., T] -> [..., T, T]."""
    seg = cs.unsqueeze(-1) - cs.unsqueeze(-2)
    # -inf before exp: entries above the diagonal would otherwise overflow.
    return torch.exp(seg.masked_fill(~_causal(seg), float("-inf")))


class _ChunkedScan(torch.autograd.Function):
    """The chunked scan without the D skip, on chunked views, with a hand-written backward.

    Inputs: x [b, c, q, g, r, p], dt [b, c, q, g, r] (discretized), A [g, r], B and C [b, c, q, g, n],
    init [b, g, r, p, n]. Outputs: y [b, c, q, g, r, p] and the final state [b, g, r, p, n].
    Autograd through the same einsums saves and revisits many more full-size intermediates; the
    explicit backward is about twice as fast on CPU. tests/model/test_ssd.py checks its gradients against
    autograd through the token-by-token recurrence.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, init: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        cs = torch.cumsum(dt * A, dim=2)  # decay log from the chunk start, inclusive
        xdt = x * dt.unsqueeze(-1)

        # 1. Within each chunk: y_t = sum_{s<=t} (C_t . B_s) exp(cs_t - cs_s) dt_s x_s.
        CB = torch.einsum("bctgn,bcsgn->bcgts", C, B)
        m = cs[:, :, -1:] * 0.5  # centre of the chunk's decay logs
        ctx.factored = bool((cs - m).abs().max() <= _FACTOR_LIMIT[cs.dtype])
        if ctx.factored:
            # exp(cs_t - cs_s) = exp(cs_t - m) exp(m - cs_s): the decay moves onto x and y, and one
            # causal C.B matrix per group serves all its heads (no per-head q x q tensors).
            Lcb = CB.masked_fill(~_causal(CB), 0.0)
            v = torch.einsum("bcgts,bcsgrp->bctgrp", Lcb, xdt * torch.exp(m - cs).unsqueeze(-1))
            y = v * torch.exp(cs - m).unsqueeze(-1)
            quad = (Lcb, v)
        else:  # decay logs too far apart for exp(+-): exact per-head segment sums
            decay = _segsum_exp(cs.permute(0, 1, 3, 4, 2))  # [b, c, g, r, t, s]
            M = decay * CB.unsqueeze(3)
            y = torch.einsum("bcgrts,bcsgrp->bctgrp", M, xdt)
            quad = (decay, M)

        # 2. The state each chunk adds at its end; states are laid out [b, c, g, n, r, p] so that
        # every product below is a plain batched matmul without permute copies (for g = 1).
        to_end = torch.exp(cs[:, :, -1:] - cs)
        states = torch.einsum("bcsgn,bcsgrp->bcgnrp", B, xdt * to_end.unsqueeze(-1))

        # 3. Between chunks: E_0 = init, E_{c+1} = exp(a_c) E_c + states_c (a_c = chunk c's decay
        # log). A loop over chunks: O(chunks) small ops, cheaper than any chunks x chunks matrix.
        ea = torch.exp(cs[:, :, -1]).permute(0, 2, 3, 1)  # [b, g, r, c]
        nc = x.shape[1]
        E = states.new_empty(states.shape[0], nc + 1, *states.shape[2:])
        E[:, 0] = init.permute(0, 1, 4, 2, 3)
        for c in range(nc):
            torch.addcmul(states[:, c], E[:, c], ea[:, :, None, :, c, None], out=E[:, c + 1])

        # 4. The entering state's contribution to each position.
        y_off = torch.einsum("bctgn,bcgnrp->bctgrp", C, E[:, :-1]) * torch.exp(cs).unsqueeze(-1)
        y += y_off
        ctx.save_for_backward(x, dt, A, B, C, cs, *quad, E, y_off)
        return y, E[:, -1].permute(0, 1, 3, 4, 2).contiguous()

    @staticmethod
    def backward(ctx, dy: Tensor, dfinal: Tensor | None):  # type: ignore[override]
        x, dt, A, B, C, cs, quad0, quad1, E, y_off = ctx.saved_tensors
        xdt = x * dt.unsqueeze(-1)
        nc = x.shape[1]

        # 4. y_off = exp(cs) * (C . E_c)
        dys = dy * torch.exp(cs).unsqueeze(-1)
        dE = torch.einsum("bctgrp,bctgn->bcgnrp", dys, C)
        dC = torch.einsum("bctgrp,bcgnrp->bctgn", dys, E[:, :-1])
        dcs = (dy * y_off).sum(-1)

        # 3. Reverse the chunk recurrence: G_nc = dfinal, G_c = dE_c + exp(a_c) G_{c+1}.
        ea = torch.exp(cs[:, :, -1]).permute(0, 2, 3, 1).unsqueeze(-1).unsqueeze(2)  # [b, g, 1, r, c, 1]
        G = dfinal.permute(0, 1, 4, 2, 3) if dfinal is not None else torch.zeros_like(E[:, -1])
        dstates = torch.empty_like(dE)
        da = dE.new_empty(ea.shape[:-1])  # [b, g, 1, r, c]
        for c in range(nc - 1, -1, -1):
            dstates[:, c] = G
            da[..., c] = (G * E[:, c]).sum(dim=(2, 4))[:, :, None] * ea[..., c, 0]
            G = torch.addcmul(dE[:, c], G, ea[..., c, :])
        dinit = G.permute(0, 1, 3, 4, 2)
        dcs[:, :, -1] += da[:, :, 0].permute(0, 3, 1, 2)

        # 2. states = sum_s to_end_s (xdt_s outer B_s)
        to_end = torch.exp(cs[:, :, -1:] - cs)
        dxs = torch.einsum("bcgnrp,bcsgn->bcsgrp", dstates, B)
        dB = torch.einsum("bcgnrp,bcsgrp->bcsgn", dstates, xdt * to_end.unsqueeze(-1))
        dxdt = dxs * to_end.unsqueeze(-1)
        dte = (dxs * xdt).sum(-1) * to_end
        dcs -= dte
        dcs[:, :, -1] += dte.sum(2)

        # 1. Within chunks.
        if ctx.factored:  # y = exp(cs - m) * (Lcb @ u), u = exp(m - cs) * xdt; m cancels exactly
            Lcb, v = quad0, quad1
            m = cs[:, :, -1:] * 0.5
            en = torch.exp(m - cs).unsqueeze(-1)
            u = xdt * en
            dv = dy * torch.exp(cs - m).unsqueeze(-1)
            du = torch.einsum("bcgts,bctgrp->bcsgrp", Lcb, dv)
            dxdt += du * en
            dcs += (dv * v).sum(-1) - (du * u).sum(-1)
            dCB = torch.einsum("bctgrp,bcsgrp->bcgts", dv, u).masked_fill_(~_causal(Lcb), 0.0)
        else:  # y = M @ xdt with M = decay * CB
            decay, M = quad0, quad1
            dM = torch.einsum("bctgrp,bcsgrp->bcgrts", dy, xdt)
            dxdt += torch.einsum("bcgrts,bctgrp->bcsgrp", M, dy)
            dCB = (dM * decay).sum(3)
            dseg = dM * M
            dcs += (dseg.sum(-1) - dseg.sum(-2)).permute(0, 1, 4, 2, 3)
        dC += torch.einsum("bcgts,bcsgn->bctgn", dCB, B)
        dB += torch.einsum("bcgts,bctgn->bcsgn", dCB, C)

        # cs = cumsum(dt * A) and xdt = x * dt
        ddA = dcs.flip(2).cumsum(2).flip(2)
        ddt = ddA * A + (dxdt * x).sum(-1)
        dA = (ddA * dt).sum(dim=(0, 1, 2))
        dx = dxdt * dt.unsqueeze(-1)
        return dx, ddt, dA, dB, dC, dinit


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
    if initial_state is None:
        init = xf.new_zeros(b, g, r, p, n)
    else:
        if initial_state.shape != (b, h, p, n):
            raise ValueError(f"initial_state must be [batch, heads, headdim, d_state] = {(b, h, p, n)}, got {tuple(initial_state.shape)}")
        init = initial_state.to(cdt).reshape(b, g, r, p, n)
    # Heads are split as (group, head-in-group) so B and C are never repeated per head. Autocast
    # is off inside: the scan accumulates in `cdt`, and its backward expects one dtype throughout.
    with torch.autocast(x.device.type, enabled=False):
        y, final_state = _ChunkedScan.apply(
            xf.reshape(b, nc, q, g, r, p),
            dt.reshape(b, nc, q, g, r),
            A.to(cdt).reshape(g, r),
            Bf.reshape(b, nc, q, g, n),
            Cf.reshape(b, nc, q, g, n),
            init,
        )
    y = y.reshape(b, nc * q, h, p)[:, :l]
    if D is not None:
        Dv = D.to(cdt)
        y = y + x.to(cdt) * (Dv.view(h, 1) if Dv.dim() == 1 else Dv)
    y = y.to(out_dtype)
    if return_final_state:
        return y, final_state.reshape(b, h, p, n)
    return y


# Chunk length of `ssd_chunked` on CPU (results do not depend on it; tests/model/test_ssd.py). 64 is
# ~10% faster than 32 on CPU, but 32 keeps even Mamba-2's initial decays (dt * |A| up to 1.6 a
# token) inside _FACTOR_LIMIT, so the fast within-chunk form is the one that runs.
CPU_CHUNK_SIZE = 32


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
