"""Where things are in the models probes supports, found by structure rather than by class.

Supported layouts (all found through `named_modules()`, so peft/LoRA wrappers are transparent):
- a Mamba LM backbone: a module with a `layers` ModuleList whose blocks have a `.mixer`
  (`sam.model.lm.MambaLM.backbone`, mamba_ssm `MixerModel`, transformers `Mamba2Model`);
- a Mamba-2 mixer: a module with `in_proj`, `conv1d`, `dt_bias` and a per-head `A_log`;
- an audio LM (SAM): `audio_tower` (with `patch_embed`, `blocks`), `connector`, `language_model`,
  and `audio_span(batch) -> LongTensor[B, 2]`.

Also how to call a model on `inputs` and which token span of each sequence is audio. This module
must never import `sam` or `mamba_ssm`, and never change a model.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

SpanLike = Any  # None | (start, end) | LongTensor/list [B, 2]


def find_backbone(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the outermost Mamba backbone: a module whose `layers` blocks have `.mixer`."""
    for path, module in model.named_modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(hasattr(b, "mixer") for b in layers):
            return path, module
    raise ValueError(
        f"{type(model).__name__} has no Mamba backbone: expected a module whose `layers` ModuleList holds "
        "blocks with a `.mixer` (sam MambaLM, mamba_ssm MambaLMHeadModel or transformers Mamba2ForCausalLM)"
    )


def join(*parts: str) -> str:
    """Dotted module path from parts, skipping empty ones (the root is '')."""
    return ".".join(p for p in parts if p)


def is_mamba2_mixer(module: nn.Module) -> bool:
    a_log = getattr(module, "A_log", None)
    return all(hasattr(module, k) for k in ("in_proj", "conv1d", "dt_bias")) and isinstance(a_log, Tensor) and a_log.dim() == 1


def mamba2_mixers(model: nn.Module, layers: Sequence[int] | None = None) -> list[tuple[int, str, nn.Module]]:
    """(layer index, module path, mixer) of the Mamba-2 mixers of the backbone, optionally only `layers`."""
    path, backbone = find_backbone(model)
    n = len(backbone.layers)
    wanted = range(n) if layers is None else list(layers)
    out = []
    for i in wanted:
        if not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"layer {i!r} is out of range: the backbone has {n} layers")
        i = i % n
        mixer = backbone.layers[i].mixer
        if not is_mamba2_mixer(mixer):
            if layers is not None:
                raise ValueError(
                    f"layer {i} ({type(mixer).__name__}) is not a Mamba-2 mixer (needs in_proj, conv1d, dt_bias, per-head A_log)"
                )
            continue
        out.append((i, join(path, "layers", str(i), "mixer"), mixer))
    if not out:
        raise ValueError(f"{type(model).__name__} has no Mamba-2 mixers (Mamba-1 layers have a 2-D A_log and are not supported)")
    return out


def takes_batch(model: nn.Module) -> bool:
    """Whether `forward`'s first parameter is a whole batch (SAM.forward(batch)) rather than tensors."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0].name == "batch"


def call_model(model: nn.Module, inputs: Any) -> Any:
    """model(**inputs) for a mapping of tensors, model(inputs) for a batch-taking model or a tensor, model(*inputs) for a tuple."""
    if isinstance(inputs, Mapping) and not takes_batch(model):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _mask_span(mask: Tensor) -> Tensor:
    """[first, last + 1) of the ones in each row of a 2-D attention mask."""
    mask = mask.bool()
    t = torch.arange(mask.shape[1], device=mask.device)
    big = mask.shape[1]
    start = torch.where(mask, t, torch.full_like(t, big)).min(1).values
    end = torch.where(mask, t + 1, torch.zeros_like(t)).max(1).values
    return torch.stack([torch.minimum(start, end), end], 1)


def resolve_spans(model: nn.Module, inputs: Any, span: SpanLike, batch: int, seq_len: int) -> Tensor:
    """LongTensor [batch, 2] of [start, end) audio-token spans in the LM sequence.

    Precedence: an explicit `span`; else `model.audio_span(inputs)` (SAM); else the non-padding
    region of `inputs['attention_mask']`; else the whole sequence.
    """
    if span is None:
        audio_span = getattr(model, "audio_span", None)
        if callable(audio_span) and inputs is not None:
            with torch.no_grad():
                span = audio_span(inputs)
        elif isinstance(inputs, Mapping) and isinstance(inputs.get("attention_mask"), Tensor) and inputs["attention_mask"].dim() == 2:
            span = _mask_span(inputs["attention_mask"])
        else:
            span = (0, seq_len)
    if isinstance(span, tuple) and len(span) == 2 and all(isinstance(v, (int, type(None))) for v in span):
        start, end = span
        span = [[start or 0, seq_len if end is None else end]] * batch
    spans = torch.as_tensor(span, dtype=torch.long).cpu()
    if spans.shape != (batch, 2):
        raise ValueError(f"span must be (start, end) or [batch={batch}, 2], got shape {tuple(spans.shape)}")
    bad = (spans[:, 0] < 0) | (spans[:, 1] > seq_len) | (spans[:, 0] > spans[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"span of sequence {i} is {spans[i].tolist()}, outside [0, {seq_len}] or reversed")
    return spans
