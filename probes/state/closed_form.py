"""The exact closed form of state-update distances, its token-by-token reference, and the choices every path shares.

Per layer, head and token t the Mamba-2 state h_t [headdim, d_state] follows
    h_t = a_t h_{t-1} + dt_t x_t B_t^T,   a_t = exp(dt_t A),  h_{-1} = 0.
`update_stats_ref` steps this recurrence and is what the tests compare the chunked paths against
(`probes.state.torch_path`, `probes.state.triton_path`); both paths use the shape check, the chunk-state
scan and the precision settings defined here. Nothing here imports the other state modules.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

COLUMNS = ["clip", "layer", "head", "position", "distance", "state_norm", "relative"]

# ---------------------------------------------------------------------------------------------
# Defaults and choices


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The probe's arithmetic when none is given: float64 on CPU, float32 on accelerators.

    float64 matches the token recurrence to ~1e-14 relative error and costs little on CPU; on GPUs
    float32 (IEEE matmuls, TF32 off) is faster and stays within ~3e-5 relative error of float64
    (measured by benchmarks/bench_state_update.py; numbers in benchmarks/README.md).
    """
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def default_chunk_size(device: torch.device | str, backend: str = "torch") -> int:
    """Probe chunk length when none is given: 32 on CPU and through the Triton kernels (whose register
    tiles fit 32-token chunks), 64 on accelerators (the fastest measured, benchmarks/README.md)."""
    return 32 if torch.device(device).type == "cpu" or backend == "triton" else 64


BACKENDS = ("auto", "torch", "triton")

# tl.dot input precisions of the Triton kernels: IEEE float32, or Triton's 3-pass TF32 emulation of
# float32 on tensor cores (`probes.state.triton_path`). The PyTorch path ignores the choice.
TRITON_PRECISIONS = ("ieee", "tf32x3")
# The default: tf32x3 dots are faster than IEEE ones with the same measured error against float64
# (benchmarks/results/state_update_cuda_780m_triton_segments.md).
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


@contextlib.contextmanager
def ieee_matmul() -> Iterator[None]:
    """float32 matmuls in full precision (TF32 off) inside the probe, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def exp_safe(dtype: torch.dtype) -> float:
    """Log-decays above minus this keep exp(-Lambda) and exp(Lambda) clear of overflow and underflow."""
    return 0.8 * math.log(torch.finfo(dtype).max)


# ---------------------------------------------------------------------------------------------
# The math: exact distances and norms from x, B, dt, A


def check_shapes(x: Tensor, B: Tensor, dt: Tensor, A: Tensor) -> tuple[int, int, int, int, int, int]:
    if x.dim() != 4 or B.dim() != 4 or x.shape[:2] != B.shape[:2] or dt.shape != x.shape[:3] or A.shape != x.shape[2:3]:
        raise ValueError(
            f"expected x [b,T,H,P], B [b,T,G,N], dt [b,T,H], A [H]; got {tuple(x.shape)}, {tuple(B.shape)}, {tuple(dt.shape)}, {tuple(A.shape)}"
        )
    b, T, H, P = x.shape
    G, N = B.shape[2:]
    if H % G:
        raise ValueError(f"{H} heads are not a multiple of {G} groups")
    return b, T, H, P, G, N


def finish_norms(dist2: Tensor, prev_norm2: Tensor) -> tuple[Tensor, Tensor]:
    # Round-off can push an exact-zero square a few ulps below 0.
    return dist2.clamp_min(0).sqrt(), prev_norm2.clamp_min(0).sqrt()


def update_stats_ref(x: Tensor, B: Tensor, dt: Tensor, A: Tensor, return_state: bool = False) -> tuple[Tensor, ...]:
    """Token-by-token reference: (||h_t - h_{t-1}||_F, ||h_{t-1}||_F), each [b, T, H] (+ the final state [b, H, P, N])."""
    b, T, H, P, G, N = check_shapes(x, B, dt, A)
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


def scan_chunks(log_decay: Tensor, values: Tensor, block: int) -> Tensor:
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
