"""Fused Triton kernels for `probes.state.update_stats`: the same exact closed form, without the per-chunk state tensors.

The quantities are those of `probes.state` (per layer, head and token t, h_t = a_t h_{t-1} + dt_t x_t B_t^T):
    c_t       = x_t^T h_{t-1} B_t
    ||h_{t-1}||^2 = exp(2 L_{t-1}) ||S||^2 + sum_{s<t} exp(2 (L_{t-1} - L_s)) beta_s,
                beta_s = 2 a_s dt_s c_s + dt_s^2 ||x_s||^2 ||B_s||^2
    ||dh_t||^2 = (a_t - 1)^2 ||h_{t-1}||^2 + 2 (a_t - 1) dt_t c_t + dt_t^2 ||x_t||^2 ||B_t||^2
where S is the state entering t's chunk and L the log-decay summed inside the chunk (L_{-1} = 0).
Two kernels compute them. Their dots run, by default (`precision="tf32x3"`), as Triton's 3-pass
TF32 emulation of float32 on tensor cores (each operand split into a high and a low TF32 part, the
low x low product dropped: close to, not exactly, float32, with the same measured error against
float64 as IEEE dots, see `probes.state.DEFAULT_TRITON_PRECISION`); `precision="ieee"`
runs them in IEEE float32 (`tl.dot(..., input_precision="ieee")`, never TF32), the error of the
PyTorch float32 path. Everything outside the dots is float32 either way. Triton's interpreter
multiplies in float32 whatever precision is named, so only a GPU run tests "tf32x3"'s accuracy:

1. `_carry_kernel`, one program per (batch, head, [BP x BN] tile of the [headdim, d_state] state),
   walks the chunks in order holding its state tile in registers. Per chunk it writes the tile's
   share of the read-out of the incoming state, exp(L_{t-1}) x_t^T S B_t, and of ||S||^2, then
   advances S = exp(L_end) S + sum_s exp(L_end - L_s) dt_s x_s B_s^T. Both shares are sums over the
   state's entries, so the tiles split them exactly and the states never go to global memory.
   Optionally (`segment_chunks`) the chunks are cut into segments walked in parallel, each
   starting from a state that one extra pass (each segment's own update) and a small scan give.
2. `_chunk_kernel`, one program per (batch, head, chunk), adds the intra-chunk part of c_t,
   sum_{s<t} exp(L_{t-1} - L_s) dt_s (x_t . x_s)(B_t . B_s), sums the tiles' shares, runs the norm
   recurrence of its chunk from ||S||^2 (a [Q, Q] matrix-vector product, so no error accumulates
   from chunk to chunk) and writes ||dh_t||_F and ||h_{t-1}||_F.

B_t . B_s is shared by the heads of a group and comes from one batched PyTorch matmul (TF32 off);
a_t - 1 is torch.expm1 of dt_t A (the kernels' exp would lose its low digits for small dt_t A).
The mixer's inputs x and B come from a third kernel, `_conv_kernel` (`conv_silu_triton`): the causal
conv and SiLU read straight from the in_proj output (about 10x faster than the PyTorch version,
benchmarks/README.md).

Triton is optional: `available()` says whether it imports. On CPU tensors the kernels run only
under Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported), which the tests use.
"""

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .closed_form import check_shapes, check_triton_precision, ieee_matmul, scan_chunks

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # the library works without triton: update_stats falls back to PyTorch
    triton = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = ""

# Tile of the [headdim, d_state] state each `_carry_kernel` program keeps, and the warps of each
# kernel: the tiles split the work without repeating any. These are the fastest settings measured with
# the probe overlapping the forward on a side stream (`probes.state.runner.OVERLAP_LAYERS`), where
# fewer, larger programs leave the forward more of the GPU (benchmarks/README.md, "State-update probe").
BLOCK_P, BLOCK_N, CARRY_WARPS, CHUNK_WARPS = 64, 64, 4, 2
# Chunks per carry segment; 0 = one segment (every chunk in one sequential loop), the default because
# the carry kernel's time is throughput, not the length of its loop. Segments stay available for
# inputs whose chunk count leaves the GPU idle (`update_stats_triton(segment_chunks=...)`).
SEGMENT_CHUNKS = 0


def available() -> bool:
    """Whether triton imports (the kernels then run on CUDA tensors, or on CPU under TRITON_INTERPRET=1)."""
    return triton is not None


def interpreted() -> bool:
    """Whether Triton's interpreter is on (kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str:
    """Why the Triton path cannot run on tensors of this device and dtype ('' when it can).

    The dtype is checked first: it is the caller's choice, whatever is installed."""
    if dtype != torch.float32:
        return f"the Triton path computes in float32 only, got {dtype}; use backend='torch' for other dtypes"
    if triton is None:
        return f"triton is not importable ({_IMPORT_ERROR}); install triton or use backend='torch'"
    if device.type != "cuda" and not interpreted():
        return f"the Triton path needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported), got {device.type}"
    return ""


def _pow2(n: int, least: int = 16) -> int:
    """tl.arange needs powers of two and tl.dot sides of at least 16."""
    return max(least, 1 << max(0, int(n) - 1).bit_length())


if triton is not None:

    @triton.jit
    def _shift(v, offs):
        """[v_{-1} = 0, v_0, ..., v_{n-2}]: an exact copy (L_{t-1} - L_{t-1} must be exactly 0, which L_t - la_t is not)."""
        return tl.sum(tl.where(offs[:, None] - 1 == offs[None, :], v[None, :], 0.0), 1)

    @triton.jit
    def _carry_kernel(
        x_ptr,
        b_ptr,
        dt_ptr,
        la_ptr,
        cin_ptr,
        snorm_ptr,
        start_ptr,
        end_ptr,
        T,
        Q,
        nchunks,
        seg_chunks,
        P,
        N,
        heads_per_group,
        n_tiles_n,
        n_tiles,
        padded_T,
        sxb,
        sxt,
        sxh,
        sxp,
        sbb,
        sbt,
        sbg,
        sbn,
        sdb,
        sdt,
        sdh,
        BQ: tl.constexpr,
        BP: tl.constexpr,
        BN: tl.constexpr,
        STATIC_CHUNKS: tl.constexpr,
        PRECISION: tl.constexpr,
        READOUT: tl.constexpr,
        HAS_START: tl.constexpr,
        STORE_END: tl.constexpr,
    ):
        pid, h, bi = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        tile, seg = pid % n_tiles, pid // n_tiles
        nseg = tl.num_programs(0) // n_tiles
        g = h // heads_per_group
        offs_p = (tile // n_tiles_n) * BP + tl.arange(0, BP)
        offs_n = (tile % n_tiles_n) * BN + tl.arange(0, BN)
        offs_q = tl.arange(0, BQ)
        x_base = x_ptr + bi * sxb + h * sxh + offs_p[:, None] * sxp
        b_base = b_ptr + bi * sbb + g * sbg + offs_n[None, :] * sbn
        d_off = bi * sdb + h * sdh
        out = (bi * tl.num_programs(1) + h) * n_tiles + tile  # row of this (batch, head, tile)
        # this (batch, head, segment)'s [P, N] state in start_ptr / end_ptr ([b, H, segments, P, N], contiguous)
        s_off = ((bi * tl.num_programs(1) + h) * nseg + seg) * P * N + offs_p[:, None] * N + offs_n[None, :]
        s_mask = (offs_p[:, None] < P) & (offs_n[None, :] < N)
        if HAS_START:
            state = tl.load(start_ptr + s_off, mask=s_mask, other=0.0)
        else:
            state = tl.zeros((BP, BN), dtype=tl.float32)
        # STATIC_CHUNKS > 0 only under the interpreter, whose range() cannot take a runtime bound (numpy >= 2.4).
        for j in range(0, STATIC_CHUNKS if STATIC_CHUNKS > 0 else seg_chunks):
            ci = seg * seg_chunks + j
            t = (ci * Q + offs_q).to(tl.int64)  # addresses: t * stride can pass 2**31 on long inputs
            valid = (offs_q < Q) & (t < T)
            la = tl.load(la_ptr + d_off + t * sdt, mask=valid, other=0.0)  # log a_t = dt_t A
            dt = tl.load(dt_ptr + d_off + t * sdt, mask=valid, other=0.0)
            xt = tl.load(x_base + t[None, :] * sxt, mask=(offs_p[:, None] < P) & valid[None, :], other=0.0)  # [BP, BQ]
            bt = tl.load(b_base + t[:, None] * sbt, mask=valid[:, None] & (offs_n[None, :] < N), other=0.0)  # [BQ, BN]
            lam = tl.cumsum(la, 0)  # L_t; padding adds 0, so the last entry is the chunk's total
            lam_end = tl.sum(tl.where(offs_q == BQ - 1, lam, 0.0), 0)
            if READOUT:
                lam_prev = lam - la  # L_{t-1} to rounding: only exp(L_{t-1}) scales the read-out (no difference taken)
                tl.store(snorm_ptr + out * nchunks + ci, tl.sum(tl.sum(state * state, 1), 0))
                read = tl.dot(state, tl.trans(bt), input_precision=PRECISION)  # [BP, BQ]: S B_t
                tl.store(cin_ptr + out * padded_T + t, tl.sum(xt * read, 0) * tl.exp(lam_prev), mask=valid)
            w = tl.exp(lam_end - lam) * dt
            state = state * tl.exp(lam_end) + tl.dot(xt * w[None, :], bt, input_precision=PRECISION)
        if STORE_END:
            tl.store(end_ptr + s_off, state, mask=s_mask)

    @triton.jit
    def _chunk_kernel(
        x_ptr,
        dt_ptr,
        la_ptr,
        am1_ptr,
        gram_ptr,
        cin_ptr,
        snorm_ptr,
        dist_ptr,
        norm_ptr,
        T,
        Q,
        nchunks,
        P,
        heads_per_group,
        n_groups,
        n_tiles,
        padded_T,
        sxb,
        sxt,
        sxh,
        sxp,
        sdb,
        sdt,
        sdh,
        BQ: tl.constexpr,
        BPF: tl.constexpr,
        BT: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        ci, h, bi = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        g = h // heads_per_group
        offs_q = tl.arange(0, BQ)
        offs_p = tl.arange(0, BPF)
        offs_k = tl.arange(0, BT)
        t = (ci * Q + offs_q).to(tl.int64)
        valid = (offs_q < Q) & (t < T)
        d_off = bi * sdb + h * sdh + t * sdt
        la = tl.load(la_ptr + d_off, mask=valid, other=0.0)
        dt = tl.load(dt_ptr + d_off, mask=valid, other=0.0)
        am1 = tl.load(am1_ptr + d_off, mask=valid, other=0.0)  # a_t - 1
        x = tl.load(
            x_ptr + bi * sxb + h * sxh + t[:, None] * sxt + offs_p[None, :] * sxp,
            mask=valid[:, None] & (offs_p[None, :] < P),
            other=0.0,
        )  # [BQ, BPF]
        gram_x = tl.dot(x, tl.trans(x), input_precision=PRECISION)  # x_t . x_s
        in_q = offs_q < Q
        gram_b = tl.load(
            gram_ptr + ((bi * n_groups + g) * nchunks + ci) * Q * Q + offs_q[:, None] * Q + offs_q[None, :],
            mask=in_q[:, None] & in_q[None, :],
            other=0.0,
        )  # B_t . B_s
        lam = tl.cumsum(la, 0)
        lam_prev = _shift(lam, offs_q)
        strict = offs_q[:, None] > offs_q[None, :]  # s < t
        decay = tl.where(strict, tl.exp(tl.where(strict, lam_prev[:, None] - lam[None, :], 0.0)), 0.0)
        cross = tl.sum(decay * gram_x * gram_b * dt[None, :], 1)
        rows = (bi * tl.num_programs(1) + h) * n_tiles + offs_k  # this head's tiles
        in_k = offs_k < n_tiles
        cross += tl.sum(tl.load(cin_ptr + rows[None, :] * padded_T + t[:, None], mask=valid[:, None] & in_k[None, :], other=0.0), 1)
        start_norm2 = tl.sum(tl.load(snorm_ptr + rows * nchunks + ci, mask=in_k, other=0.0), 0)
        diag = offs_q[:, None] == offs_q[None, :]
        sq = dt * dt * tl.sum(x * x, 1) * tl.sum(tl.where(diag, gram_b, 0.0), 1)  # dt^2 ||x||^2 ||B||^2
        beta = 2.0 * tl.exp(la) * dt * cross + sq
        prev2 = tl.exp(2.0 * lam_prev) * start_norm2 + tl.sum(decay * decay * beta[None, :], 1)
        dist2 = am1 * am1 * prev2 + 2.0 * am1 * dt * cross + sq
        # Round-off can push an exact-zero square a few ulps below 0.
        tl.store(dist_ptr + d_off, tl.sqrt(tl.maximum(dist2, 0.0)), mask=valid)
        tl.store(norm_ptr + d_off, tl.sqrt(tl.maximum(prev2, 0.0)), mask=valid)

    @triton.jit
    def _conv_kernel(
        z_ptr,
        w_ptr,
        bias_ptr,
        mask_ptr,
        out_ptr,
        T,
        C,
        lo,
        szb,
        szt,
        szc,
        smb,
        smt,
        K: tl.constexpr,
        BT: tl.constexpr,
        BC: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_MASK: tl.constexpr,
        MASK_INPUT: tl.constexpr,
    ):
        # out[b, t, c] = silu(bias_c + sum_j w[c, j] z[b, t - K + 1 + j, lo + c]) (x mask), in float32
        bi = tl.program_id(2).to(tl.int64)
        t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        in_c = c < C
        acc = tl.zeros((BT, BC), dtype=tl.float32)
        for j in tl.static_range(K):
            ts = t - (K - 1) + j
            ok = (ts >= 0) & (ts < T)
            v = tl.load(z_ptr + bi * szb + ts[:, None] * szt + (lo + c)[None, :] * szc, mask=ok[:, None] & in_c[None, :], other=0.0)
            v = v.to(tl.float32)
            if HAS_MASK and MASK_INPUT:
                v *= tl.load(mask_ptr + bi * smb + ts * smt, mask=ok, other=0.0)[:, None]
            acc += v * tl.load(w_ptr + c * K + j, mask=in_c, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + c, mask=in_c, other=0.0)[None, :]
        acc = acc * tl.sigmoid(acc)
        in_t = t < T
        if HAS_MASK:
            acc *= tl.load(mask_ptr + bi * smb + t * smt, mask=in_t, other=0.0)[:, None]
        tl.store(out_ptr + (bi * T + t[:, None]) * C + c[None, :], acc, mask=in_t[:, None] & in_c[None, :])


def conv_silu_triton(
    zxbcdt: Tensor, lo: int, channels: int, weight: Tensor, bias: Tensor | None, mask: Tensor | None = None, mask_input: bool = True
) -> Tensor:
    """The mixer's causal depthwise conv + SiLU on zxbcdt[..., lo : lo + channels], fused, as float32 [b, T, channels].

    `weight` [channels, d_conv] and `bias` [channels] are the conv's (cast to float32 here); `mask`
    [b, T] zeroes padded tokens after the SiLU and, with `mask_input`, also before the conv (as
    sam / mamba_ssm mixers do; transformers' mixer does not). zxbcdt may be any float dtype and a
    strided view; the conv is read straight from it, so x and B never exist in the model's dtype.
    Same arithmetic as `probes.state.ssm_inputs`' PyTorch conv in float32, up to summation order.
    """
    reason = unavailable_reason(zxbcdt.device, torch.float32)
    if reason:
        raise RuntimeError(reason)
    b, T, _ = zxbcdt.shape
    K = int(weight.shape[-1])
    out = torch.empty(b, T, channels, dtype=torch.float32, device=zxbcdt.device)
    w = weight.detach().reshape(channels, K).float().contiguous()
    bias_f = bias.detach().float().contiguous() if bias is not None else w
    mask_f = mask.float() if mask is not None else w
    smb, smt = mask_f.stride() if mask is not None else (0, 0)
    BT, BC = 32, 128
    _conv_kernel[(triton.cdiv(T, BT), triton.cdiv(channels, BC), b)](
        zxbcdt,
        w,
        bias_f,
        mask_f,
        out,
        T,
        channels,
        lo,
        *zxbcdt.stride(),
        smb,
        smt,
        K=K,
        BT=BT,
        BC=BC,
        HAS_BIAS=bias is not None,
        HAS_MASK=mask is not None,
        MASK_INPUT=mask_input,
        num_warps=4,
    )
    return out


def update_stats_triton(
    x: Tensor,
    B: Tensor,
    dt: Tensor,
    A: Tensor,
    chunk_size: int = 32,
    block_p: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    precision: str = "tf32x3",
    segment_chunks: int | None = None,
) -> tuple[Tensor, Tensor]:
    """`probes.state.update_stats` through the fused kernels: (||h_t - h_{t-1}||_F, ||h_{t-1}||_F), each [b, T, H], float32.

    x [b,T,H,P], B [b,T,G,N], dt [b,T,H], A [H], all float32 on one CUDA device (or CPU under the
    interpreter); x and B may be strided views. `block_p` x `block_n` is the state tile of one carry
    program and `num_warps` its warps (defaults: the module's BLOCK_P, BLOCK_N, CARRY_WARPS; tiles
    are clipped to the state and must be powers of two >= 16). `precision` is the kernels' tl.dot
    input precision, one of `probes.state.TRITON_PRECISIONS`: "ieee" (float32) or "tf32x3" (3-pass
    TF32 on tensor cores). `segment_chunks` (default SEGMENT_CHUNKS; 0 = all chunks in one
    segment) is how many chunks one carry program walks; longer inputs are cut into segments of that
    many chunks whose entering states come from a pass that sums each segment's update and a
    [segments x segments] scan.
    """
    b, T, H, P, G, N = check_shapes(x, B, dt, A)
    check_triton_precision(precision)
    reason = unavailable_reason(x.device, x.dtype)
    if reason:
        raise RuntimeError(reason)
    if not (B.dtype == dt.dtype == A.dtype == x.dtype) or len({x.device, B.device, dt.device, A.device}) != 1:
        raise ValueError("x, B, dt and A must share one dtype and device")
    Q = int(chunk_size)
    if Q < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bp, bn = _pow2(min(block_p or BLOCK_P, P)), _pow2(min(block_n or BLOCK_N, N))
    if bp != (block_p or bp) or bn != (block_n or bn):
        raise ValueError(f"block_p and block_n must be powers of two >= 16, got {block_p}, {block_n}")
    seg = int(SEGMENT_CHUNKS if segment_chunks is None else segment_chunks)
    if seg < 0:
        raise ValueError(f"segment_chunks must be >= 0 (0 = one segment), got {segment_chunks}")
    c = -(-T // Q)  # chunks holding tokens
    seg = min(seg, c) if seg else c
    nseg = -(-c // seg)
    nc = nseg * seg  # chunks the carry kernel walks (the last segment padded with empty chunks)
    padded_T = nc * Q
    la = (dt * A).contiguous()  # log a_t
    am1 = torch.expm1(la)
    dt = dt.contiguous()
    with ieee_matmul():  # B_t . B_s per group and chunk: [b, G, nc, Q, Q]
        bc = F.pad(B, (0, 0, 0, 0, 0, padded_T - T)).reshape(b, nc, Q, G, N).permute(0, 3, 1, 2, 4)
        gram_b = (bc @ bc.transpose(-1, -2)).contiguous()
    n_tiles_n = -(-N // bn)
    n_tiles = -(-P // bp) * n_tiles_n
    cin = torch.empty(b, H, n_tiles, padded_T, dtype=x.dtype, device=x.device)
    snorm = torch.empty(b, H, n_tiles, nc, dtype=x.dtype, device=x.device)
    dist, norm = torch.empty_like(dt), torch.empty_like(dt)
    BQ, R = _pow2(Q), H // G
    carry = dict(
        BQ=BQ,
        BP=bp,
        BN=bn,
        STATIC_CHUNKS=seg if interpreted() else 0,
        PRECISION=precision,
        num_warps=num_warps or CARRY_WARPS,
    )
    args = (T, Q, nc, seg, P, N, R, n_tiles_n, n_tiles, padded_T, *x.stride(), *B.stride(), *dt.stride())
    starts = ends = cin  # unused pointers when there is one segment
    if nseg > 1:
        # Each segment's own update (from a zero state), then the states entering each segment:
        # S_k = sum_{j<k} exp(log decay of segments j+1..k-1) end_j, one masked matmul over segments.
        ends = torch.empty(b, H, nseg, P, N, dtype=x.dtype, device=x.device)
        _carry_kernel[(n_tiles * nseg, H, b)](
            x, B, dt, la, cin, snorm, ends, ends, *args, READOUT=False, HAS_START=False, STORE_END=True, **carry
        )
        log_seg = F.pad(la, (0, 0, 0, padded_T - T)).view(b, nseg, seg * Q, H).sum(2).transpose(1, 2)  # [b, H, nseg]
        with ieee_matmul():
            starts = scan_chunks(log_seg, ends.view(b, H, nseg, P * N), nseg).contiguous()
        del ends
    _carry_kernel[(n_tiles * nseg, H, b)](
        x, B, dt, la, cin, snorm, starts, starts, *args, READOUT=True, HAS_START=nseg > 1, STORE_END=False, **carry
    )
    del starts
    _chunk_kernel[(c, H, b)](
        x,
        dt,
        la,
        am1,
        gram_b,
        cin,
        snorm,
        dist,
        norm,
        T,
        Q,
        nc,
        P,
        R,
        G,
        n_tiles,
        padded_T,
        *x.stride(),
        *dt.stride(),
        BQ=BQ,
        BPF=_pow2(P),
        BT=_pow2(n_tiles, 1),
        PRECISION=precision,
        num_warps=CHUNK_WARPS,
    )
    return dist, norm
