"""Timing inside the state-update probe for `bench_state_update.py`: the probe's phases (input recompute, closed
form, Triton kernels) on one clock, and the Triton kernels' tile settings set for a block."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

import probes


@contextlib.contextmanager
def triton_tile(tile: str) -> Iterator[None]:
    """probes.triton_state's carry tile and warps (and chunks per carry segment, chunk-kernel warps) set to `tile` inside the block."""
    if not tile:
        yield
        return
    from probes import triton_state

    names = ["BLOCK_P", "BLOCK_N", "CARRY_WARPS", "SEGMENT_CHUNKS", "CHUNK_WARPS"]
    saved = {n: getattr(triton_state, n) for n in names}
    for n, v in zip(names, tile.split("x")):
        setattr(triton_state, n, int(v))
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(triton_state, n, v)


def triton_default_tile() -> str:
    from probes import triton_state

    t = triton_state
    return f"{t.BLOCK_P}x{t.BLOCK_N}x{t.CARRY_WARPS}x{t.SEGMENT_CHUNKS}x{t.CHUNK_WARPS}"


class PhaseClock:
    """Time spent inside wrapped calls, summed per name: CUDA events on CUDA (the stream's time
    between them, read after one synchronize), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, list[tuple[Any, Any]]] = {}

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def wrap(self, name: str, fn: Any) -> Any:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = self._mark()
            out = fn(*args, **kwargs)
            self.marks.setdefault(name, []).append((start, self._mark()))
            return out

        return timed_call

    def seconds(self) -> dict[str, float]:
        """Summed seconds per name (call after the device is synchronized)."""
        span = (lambda a, b: a.elapsed_time(b) / 1e3) if self.cuda else (lambda a, b: b - a)
        return {name: sum(span(a, b) for a, b in marks) for name, marks in self.marks.items()}

    def calls(self) -> dict[str, int]:
        return {name: len(marks) for name, marks in self.marks.items()}


class TimedLaunch:
    """A Triton kernel whose `kernel[grid](...)` launches go through a PhaseClock."""

    def __init__(self, kernel: Any, clock: PhaseClock, name: str) -> None:
        self.kernel, self.clock, self.name = kernel, clock, name

    def __getitem__(self, grid: Any) -> Any:
        return self.clock.wrap(self.name, self.kernel[grid])


@contextlib.contextmanager
def phase_clock(device: torch.device, backend: str) -> Iterator[PhaseClock]:
    """probes.state's `ssm_inputs` and `update_stats` (and, on the Triton backend, the carry and
    chunk kernels) timed by one PhaseClock inside the block; the originals restored afterwards."""
    clock = PhaseClock(device)
    state = probes.state.runner  # where `state_updates` looks these names up
    patched: list[tuple[Any, str, Any]] = [(state, "ssm_inputs", state.ssm_inputs), (state, "update_stats", state.update_stats)]
    if backend == "triton":
        from probes import triton_state

        patched += [(triton_state, k, getattr(triton_state, k)) for k in ("_carry_kernel", "_chunk_kernel", "_conv_kernel")]
    try:
        for module, attr, orig in patched:
            name = attr.strip("_")
            setattr(module, attr, TimedLaunch(orig, clock, name) if attr.endswith("_kernel") else clock.wrap(name, orig))
        yield clock
    finally:
        for module, attr, orig in patched:
            setattr(module, attr, orig)
