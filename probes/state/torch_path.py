"""The PyTorch path: the closed form in chunks (batched matmuls, about one SSD pass), and the mixer's conv + SiLU.

||dh_t||^2 = (a_t - 1)^2 ||h_{t-1}||^2 + 2 (a_t - 1) dt_t c_t + dt_t^2 ||x_t||^2 ||B_t||^2 and
||h_t||^2 = a_t^2 ||h_{t-1}||^2 + 2 a_t dt_t c_t + dt_t^2 ||x_t||^2 ||B_t||^2, with c_t = x_t^T h_{t-1} B_t an SSD
read-out of the previous state with C replaced by B: a masked quadratic form inside a chunk plus one
state per chunk, so extra memory is one layer's chunk states and no h_t is ever stored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .closed_form import check_shapes, exp_safe, finish_norms, scan_chunks


def update_stats_torch(
    x: Tensor, B: Tensor, dt: Tensor, A: Tensor, chunk_size: int = 32, scan_block: int | None = None
) -> tuple[Tensor, Tensor]:
    """Exact (||h_t - h_{t-1}||_F, ||h_{t-1}||_F), each [b, T, H], in chunks of `chunk_size` tokens.

    Work is about one SSD pass (batched matmuls over chunks); memory is O(b T H chunk_size) plus one
    [headdim, d_state] state per head and chunk. The states carried between chunks are solved
    `scan_block` chunks per step (default: 64 on GPUs, where each step's launches dominate; 8 on CPU,
    where the block's matmul work does).
    """
    b, T, H, P, G, N = check_shapes(x, B, dt, A)
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
    factored = float(cum.min()) > -exp_safe(x.dtype) / 2
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
    starts = scan_chunks(log_chunk, per_head, scan_block).transpose(2, 3).reshape(b, G, c, R * P, N)
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
    start_norm2 = scan_chunks(2 * log_chunk, norm2[..., -1].transpose(-1, -2)[..., None], scan_block)[..., 0].transpose(-1, -2)  # [b,G,c,R]
    norm2 = norm2 + torch.exp(2 * cum) * start_norm2[..., None]

    def tokens(v: Tensor) -> Tensor:  # [b,G,c,R,Q] -> [b,T,H]
        return v.permute(0, 2, 4, 1, 3).reshape(b, c * Q, H)[:, :T]

    norm2 = tokens(norm2)
    prev_norm2 = torch.cat([norm2.new_zeros(b, 1, H), norm2[:, :-1]], 1)
    am1, dtf = tokens(torch.expm1(la)), tokens(dts)
    dist2 = am1**2 * prev_norm2 + 2 * am1 * dtf * tokens(cross) + tokens(sq_update)
    return finish_norms(dist2, prev_norm2)


def conv_silu_torch(
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
