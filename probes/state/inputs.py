"""The mixer's SSM inputs x, B, dt, A, recomputed from its in_proj output (sam, mamba_ssm and transformers mixers),
and the choice of backend (PyTorch or the fused Triton kernels) for tensors of a device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import triton_path
from .closed_form import check_backend
from .torch_path import conv_silu_torch


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


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """'torch' or 'triton' for tensors of this device and dtype.

    'auto' is the fused Triton kernels (`probes.state.triton_path`) for float32 CUDA tensors when triton
    imports, else PyTorch; 'triton' refuses, with the reason, what the kernels cannot run.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "torch" or (backend == "auto" and (device.type != "cuda" or dtype != torch.float32)):
        return "torch"
    reason = triton_path.unavailable_reason(device, dtype)
    if reason and backend == "triton":
        raise RuntimeError(f"backend='triton': {reason}")
    return "torch" if reason else "triton"


def ssm_inputs(
    mixer: nn.Module, zxbcdt: Tensor, mask: Tensor | None = None, dtype: torch.dtype = torch.float64, backend: str = "torch"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x [b,T,H,P], B [b,T,G,N], dt [b,T,H], A [H] from a mixer's in_proj output [b, T, d_in_proj].

    The in_proj output is [z0, x0, z, xBC, dt] (mamba_ssm; the first three may be empty) or
    [gate, xBC, dt] (transformers): xBC and dt are always its last conv_dim + nheads columns.
    `backend` as in `resolve_backend`: "triton" (float32 only) runs the conv and SiLU as one Triton
    kernel (`probes.state.triton_path.conv_silu_triton`) reading the in_proj output in place; "torch" as below.
    """
    shape = mixer_shape(mixer)
    if zxbcdt.dim() != 3:
        raise ValueError(
            f"in_proj output must be [batch, length, features], got {tuple(zxbcdt.shape)} (packed/flattened inputs are not supported)"
        )
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
        xbc = triton_path.conv_silu_triton(zxbcdt, lo, used, weight, bias, mask, mask_input)
    else:
        xbc = conv_silu_torch(
            zxbcdt[..., lo : lo + used], weight.to(dtype), None if bias is None else bias.to(dtype), mask, mask_input, dtype
        )
    x, B = xbc[..., : h * p], xbc[..., h * p : h * p + g * n]
    dt = F.softplus(dt + mixer.dt_bias.detach().to(dtype))
    if shape.dt_limit != (0.0, float("inf")):
        dt = dt.clamp(min=shape.dt_limit[0], max=shape.dt_limit[1])
    A = -torch.exp(mixer.A_log.detach().to(dtype))
    return x.reshape(b, T, h, p), B.reshape(b, T, g, n), dt, A
