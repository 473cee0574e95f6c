"""FLOPs of a training step (counted by torch's FlopCounterMode) and the device's measured matmul peak, for MFU."""

from __future__ import annotations

import time
from typing import Any

import torch

from sam.model.sam import label_positions
from sam.prompt import IGNORE_INDEX


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best FLOP/s of an n x n x n matmul over `repeats` timed runs."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * n**3 / best


def step_flops(step: Any) -> int:
    """FLOPs of one call of `step()` on the pure-PyTorch kernel path."""
    from torch.utils.flop_counter import FlopCounterMode

    from sam.model.mamba2 import Mamba2Mixer

    previous = getattr(Mamba2Mixer, "kernels", None)
    Mamba2Mixer.kernels = "torch"
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    finally:
        Mamba2Mixer.kernels = previous
    return int(counter.get_total_flops())


def count_flops(model: Any, batch: dict[str, torch.Tensor], step: Any) -> dict[str, int]:
    """FLOPs of one training step on `batch` (`step(batch)` runs it): `needed`, with the LM head on
    the labelled positions only (what a labelhead variant and the trainer compute), and `full_head`,
    with the head on every position of the [audio][text] sequence (what the other variants compute,
    and what results before the labelhead path counted); `labelled` and `positions` say how many
    positions the head covers in each.

    Counted on the PyTorch path, whose quadratic chunk tensors would not fit at full batch on big
    shapes: one clip of the (equal-length, padded) batch, scaled by the batch size. The head's cost
    per position is the difference between that clip's step with the head everywhere and with the
    head on its labelled positions only, so `needed` = `full_head` - that cost x the unlabelled
    positions of the whole batch. The SSD is counted at its default chunk size for every variant
    (smaller chunks do somewhat fewer intra-chunk FLOPs; one count keeps MFU proportional to speed)."""
    b = int(batch["fbank"].shape[0])
    one = {k: v[:1] for k, v in batch.items()}
    per_clip = model.num_audio_tokens(int(batch["fbank"].shape[1])) + int(batch["input_ids"].shape[1])
    labelled_one = int((one["labels"] != IGNORE_INDEX).sum())
    full = step_flops(lambda: step(one))
    head_only = step_flops(lambda: step({**one, "label_positions": label_positions(one["labels"], bucket=1)}))
    per_position = (full - head_only) / (per_clip - labelled_one)
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    return {
        "full_head": b * full,
        "needed": int(b * full - per_position * (b * per_clip - labelled)),
        "labelled": labelled,
        "positions": b * per_clip,
    }


def flops_text(r: dict[str, Any]) -> str:
    if "flops_per_step_full_head" not in r:  # a result written before the labelhead path
        return f"{r['flops_per_step'] / 1e12:.3f} TFLOP (FlopCounterMode, PyTorch path)"
    pos = r["head_positions"]
    return (
        f"{r['flops_per_step'] / 1e12:.3f} TFLOP needed: FlopCounterMode on the PyTorch path (SSD at its default chunk size), "
        f"LM head on the {pos['labelled']} labelled positions only; MFU counts these for every variant. "
        f"{r['flops_per_step_full_head'] / 1e12:.3f} TFLOP with the head on all {pos['all']} positions, as variants "
        "without labelhead compute it and earlier results counted ('full-head count')"
    )
