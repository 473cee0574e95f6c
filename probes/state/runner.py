"""SSM state-update distance: how far each audio token moves each Mamba-2 head's state, exactly.

Per layer, head and token t the Mamba-2 state h_t [headdim, d_state] follows
    h_t = a_t h_{t-1} + dt_t x_t B_t^T,   a_t = exp(dt_t A),  h_{-1} = 0.
We report d_t = ||h_t - h_{t-1}||_F, ||h_{t-1}||_F and their ratio without ever storing an h_t:
    ||dh_t||^2 = (a_t - 1)^2 ||h_{t-1}||^2 + 2 (a_t - 1) dt_t c_t + dt_t^2 ||x_t||^2 ||B_t||^2
    ||h_t||^2  = a_t^2 ||h_{t-1}||^2 + 2 a_t dt_t c_t + dt_t^2 ||x_t||^2 ||B_t||^2
with c_t = x_t^T h_{t-1} B_t, an SSD read-out of the previous state with C replaced by B. `update_stats`
computes c_t in chunks (a masked quadratic form inside a chunk plus one state per chunk, as in the
Mamba-2 SSD algorithm) and the scalar norm recurrence the same way, so extra memory is one layer's
chunk states (`probes.state.torch_path`); on float32 CUDA tensors it runs fused Triton kernels instead
(`probes.state.triton_path`, the same closed form with the chunk states kept on chip) when triton is
installed. `update_stats_ref` (`probes.state.closed_form`) steps the recurrence token by token and is
what the tests compare against.

x, B, dt come from the model itself: a forward hook on each mixer's `in_proj` (its output, so a
peft LoRA wrapper at that path is included) recomputes the causal conv1d, SiLU, the split into
x/B/C, dt = softplus(dt + dt_bias) (clamped to the mixer's dt limit) and A = -exp(A_log), and
applies the padding mask the mixer receives (transformers zeroes padded x and B). Packed sequences
(mamba_ssm `seq_idx`/`cu_seqlens`) are not supported. This package must never change a model's
outputs, import `sam` or `mamba_ssm`, or approximate the distances.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..models import SpanLike, call_model, mamba2_mixers, resolve_spans
from . import triton_path
from .closed_form import (
    COLUMNS,
    DEFAULT_TRITON_PRECISION,
    check_backend,
    check_shapes,
    check_triton_precision,
    default_chunk_size,
    default_dtype,
    ieee_matmul,
    update_stats_ref,
)
from .inputs import resolve_backend, ssm_inputs
from .torch_path import update_stats_torch


def update_stats(
    x: Tensor,
    B: Tensor,
    dt: Tensor,
    A: Tensor,
    chunk_size: int = 32,
    scan_block: int | None = None,
    backend: str = "auto",
    triton_precision: str = DEFAULT_TRITON_PRECISION,
) -> tuple[Tensor, Tensor]:
    """Exact (||h_t - h_{t-1}||_F, ||h_{t-1}||_F), each [b, T, H], in chunks of `chunk_size` tokens.

    `backend` (see `resolve_backend`): 'triton' runs the fused kernels of `probes.state.triton_path`
    (float32; the per-chunk states stay on chip; `triton_precision`, one of TRITON_PRECISIONS and
    checked whatever the backend, is their matmuls' precision), 'torch' `update_stats_torch`
    (`scan_block` applies to it only).
    """
    check_shapes(x, B, dt, A)
    check_triton_precision(triton_precision)
    if resolve_backend(backend, x.device, x.dtype) == "triton":
        return triton_path.update_stats_triton(x, B, dt, A, chunk_size, precision=triton_precision)
    return update_stats_torch(x, B, dt, A, chunk_size, scan_block)


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
                raise RuntimeError(
                    f"layer {layer}'s in_proj ran twice in one forward; state distances need one full-sequence forward (no step decoding)"
                )
            zxbcdt, mask = output.detach(), masks.get(layer)
            with side.run(zxbcdt, mask) if side and zxbcdt.is_cuda else contextlib.nullcontext():
                with torch.no_grad(), torch.autocast(output.device.type, enabled=False), ieee_matmul():
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
    model: nn.Module,
    inputs: Any,
    layers: Sequence[int] | None = None,
    span: SpanLike = None,
    *,
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    triton_precision: str = DEFAULT_TRITON_PRECISION,
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
        model,
        inputs,
        layers,
        span,
        dtype=dtype,
        chunk_size=chunk_size,
        backend=backend,
        triton_precision=triton_precision,
        overlap=overlap,
    ).to_frame()


def state_update_distance_ref(model: nn.Module, inputs: Any, layers: Sequence[int] | None = None, span: SpanLike = None) -> pd.DataFrame:
    """`state_update_distance` through the token-by-token recurrence in float64 (slow; the test reference)."""
    return state_updates(model, inputs, layers, span, dtype=torch.float64, reference=True).to_frame()
