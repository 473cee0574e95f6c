"""Speed options that leave the computed step unchanged: bf16 autocast, CUDA graphs, regional torch.compile."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sam.config import ConfigError, TrainConfig
from sam.model.mamba2 import opaque_kernels
from sam.prompt import IGNORE_INDEX
from sam.train.distributed import blocks


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for precision=auto; explicit bf16 anywhere; fp32 otherwise."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision: expected auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class CudaGraphs:
    """Forward + weighted backward of a micro-batch, captured once per batch shape as a CUDA graph
    and replayed (`train.cuda_graphs`; one CUDA process, LM stages).

    A step of a large model on short sequences is bound by the host launching thousands of small
    kernels (mamba_ssm's SSD backward alone spends milliseconds of Python per layer); a replay
    launches them all at once. Text is right-padded to a multiple of `bucket` tokens (padding is
    masked and unlabelled, so the loss and gradients are those of the unpadded batch) to bound the
    number of shapes, hence graphs; all graphs share one memory pool. Gradients accumulate into
    `.grad` tensors allocated outside the graphs, so the caller must zero them in place
    (`zero_grad(set_to_none=False)`), never free them. The gradients are restored after the warm-up
    runs that precede a capture, so those add nothing to the step.
    """

    def __init__(self, net: nn.Module, trainable: Sequence[torch.nn.Parameter], train: TrainConfig, device: torch.device, bucket: int = 16):
        if device.type != "cuda":
            raise ConfigError("train.cuda_graphs needs a CUDA device")
        self.net, self.trainable, self.train, self.device, self.bucket = net, list(trainable), train, device, bucket
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Size]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def _pad(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        tensors = {k: v for k, v in batch.items() if torch.is_tensor(v)}
        width = tensors["input_ids"].shape[1]
        extra = -width % self.bucket
        if extra:
            fill = {"input_ids": 0, "labels": IGNORE_INDEX, "attention_mask": 0}
            for k, value in fill.items():
                if k in tensors:
                    v = tensors[k]
                    tensors[k] = torch.cat([v, v.new_full((v.shape[0], extra), value)], dim=1)
        return tensors

    def _forward_backward(self, static: dict[str, torch.Tensor], weight: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        with autocast(self.device, self.train.precision):
            loss, logits = self.net(static)
        (loss * weight).backward()
        return loss.detach(), logits.shape

    def _capture(self, tensors: dict[str, torch.Tensor]) -> tuple:
        static = {k: v.to(self.device) for k, v in tensors.items()}
        weight = torch.zeros((), device=self.device)
        for p in self.trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        kept = [p.grad.clone() for p in self.trainable]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # autotuning, compilation and allocations happen here, not in the graph
            for _ in range(2):
                self._forward_backward(static, weight)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch._foreach_copy_([p.grad for p in self.trainable], kept)
        del kept
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            loss, shape = self._forward_backward(static, weight)
        return graph, static, weight, loss, shape

    def __call__(self, batch: dict[str, Any], weight: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, a meta tensor of the logits' shape, the padded batch) after accumulating
        `weight` x the gradient of this micro-batch's loss. The loss tensor is overwritten by the
        next replay of the same shape: consume it (on the stream) before then."""
        tensors = self._pad(batch)
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(tensors.items()))
        if key not in self.graphs:
            self.graphs[key] = self._capture(tensors)
        graph, static, w, loss, shape = self.graphs[key]
        for k, v in tensors.items():
            static[k].copy_(v, non_blocking=True)
        w.fill_(weight)
        graph.replay()
        return loss, torch.empty(shape, device="meta"), tensors


def check_compile(train: TrainConfig, device: torch.device, world_size: int) -> None:
    """Refuse `train.compile` where it is not known to give eager's gradients (ConfigError)."""
    if not train.compile:
        return
    if device.type != "cuda" or world_size > 1:
        raise ConfigError("train.compile needs one CUDA process (refused on CPU; compiled blocks under torchrun are not tested)")


def compile_blocks(module: nn.Module, device: torch.device, mode: str | None = None) -> list[nn.Module]:
    """`train.compile`: torch.compile, in place, every encoder block, Mamba-2 block and connector
    inside `module` (regional compilation: the blocks of one stack share a code object, so one
    compilation serves them all). mamba_ssm's Triton kernels stay opaque (`sam.model.mamba2.opaque_kernels`):
    they run eagerly between the compiled regions. Only `forward` is replaced, as an instance
    attribute; `uncompile_blocks` restores it. CUDA only (the speed it buys is fewer GPU kernels).

    Compiled dropout draws its masks from Inductor's generator, not eager's: the same distribution,
    other masks (CUDA graphs differ from eager the same way), so with dropout on, compiled and eager
    gradients differ by the masks alone. With dropout off (or `torch._inductor.config.fallback_random`)
    they agree to bf16 rounding under bf16 autocast and to TF32 rounding in fp32 (tests/test_gpu.py).
    """
    if device.type != "cuda":
        raise ConfigError("train.compile needs a CUDA device (it compiles the blocks for the GPU; on CPU leave it false)")
    opaque_kernels(True)
    done = []
    for m in blocks(module, connector=True):
        if "forward" not in vars(m):
            m.forward = torch.compile(m.forward, mode=mode)
            done.append(m)
    return done


def uncompile_blocks(modules: Sequence[nn.Module]) -> None:
    """Undo `compile_blocks` on these modules (their plain `forward` again) and hand mamba_ssm's
    kernels back unwrapped (`sam.model.mamba2.opaque_kernels(False)`): the model runs as before it was
    compiled."""
    for m in modules:
        vars(m).pop("forward", None)
    opaque_kernels(False)
