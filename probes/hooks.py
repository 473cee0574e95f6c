"""Stable probe-site names and `run_with_cache`: record activations of a real model with hooks.

Names are the same on SAM, `sam.model.lm.MambaLM`, mamba_ssm's `MambaLMHeadModel` and transformers'
`Mamba2ForCausalLM` (found by structure, see `probes.models`), and any `named_modules()` path is a
name too:

| name | what it carries |
|---|---|
| `encoder.patches` | patch embeddings, `audio_tower.patch_embed` output |
| `encoder.blocks.{i}` | output of encoder block i |
| `encoder.out` | the encoder's grid [B, T, F, D] |
| `connector.in` | audio tokens after the layout, before the connector's MLP |
| `connector.out` | audio tokens in LM space (the connector's output) |
| `lm.embed` | the sequence entering the first LM block (token embeddings, audio tokens spliced in) |
| `lm.layers.{i}` | the residual stream after block i. mamba_ssm blocks return (mixer output, residual) and fuse the add into the next norm; we record their sum, which is what the next block normalizes |
| `lm.layers.{i}.mixer` | block i's mixer output (its contribution to the stream) |
| `lm.norm_f` | the final normed hidden states (the backbone's output, as mamba_ssm's fused path never calls the norm_f module) |

The cache also knows each sequence's audio-token span (`model.audio_span(batch)` for SAM, `span=`,
an attention mask's non-padding region, or the whole sequence), so `cache.tokens(name)` gives the
audio tokens of each clip. Hooks only read: they never return a value or modify a tensor, so a
hooked forward equals an unhooked one bit for bit. This module must never import `sam`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from .models import SpanLike, call_model, find_backbone, join, resolve_spans, takes_batch

Names = Union[None, str, Sequence[str], "re.Pattern[str]", Callable[[str], bool]]


@dataclass(frozen=True)
class Site:
    """A probe site: which module to hook, what to read from it, and whether the audio span applies."""

    name: str
    path: str
    read: str  # "output" | "input" (first positional arg) | "residual" (hidden + residual of a block) | "grid" (conv [B, D, T, F] -> [B, T, F, D])
    sequence: bool  # True for LM-sequence sites, where the audio span selects the audio tokens
    prefix_tokens: int = 0  # leading non-audio tokens (an encoder's CLS) that `tokens()` drops


def _find_child_path(model: nn.Module, leaf: str) -> str | None:
    """Shortest module path whose last component is `leaf` (so peft prefixes do not matter)."""
    found = [p for p, _ in model.named_modules() if p.split(".")[-1] == leaf]
    return min(found, key=len) if found else None


def stable_sites(model: nn.Module) -> dict[str, Site]:
    """The stable names this model supports, mapped to the modules behind them."""
    sites: dict[str, Site] = {}
    modules = dict(model.named_modules())
    tower = _find_child_path(model, "audio_tower")
    if tower is not None:
        tower_mod = modules[tower]
        if hasattr(tower_mod, "patch_embed"):
            read = "grid" if isinstance(tower_mod.patch_embed, nn.Conv2d) else "output"
            sites["encoder.patches"] = Site("encoder.patches", join(tower, "patch_embed"), read, False)
        cls = 1 if isinstance(getattr(tower_mod, "cls_token", None), Tensor) else 0
        for i, _ in enumerate(getattr(tower_mod, "blocks", [])):
            sites[f"encoder.blocks.{i}"] = Site(f"encoder.blocks.{i}", join(tower, "blocks", str(i)), "output", False, cls)
        sites["encoder.out"] = Site("encoder.out", tower, "output", False)
    connector = _find_child_path(model, "connector")
    if connector is not None:
        mlp = next((join(connector, k) for k in ("mlp", "proj", "projector") if join(connector, k) in modules), None)
        if mlp is not None:
            sites["connector.in"] = Site("connector.in", mlp, "input", False)
        sites["connector.out"] = Site("connector.out", connector, "output", False)
    try:
        backbone, bb = find_backbone(model)
    except ValueError:
        return sites
    layers = join(backbone, "layers")
    sites["lm.embed"] = Site("lm.embed", join(layers, "0"), "input", True)
    for i in range(len(bb.layers)):
        sites[f"lm.layers.{i}"] = Site(f"lm.layers.{i}", join(layers, str(i)), "residual", True)
        sites[f"lm.layers.{i}.mixer"] = Site(f"lm.layers.{i}.mixer", join(layers, str(i), "mixer"), "output", True)
    sites["lm.norm_f"] = Site("lm.norm_f", backbone, "output", True)
    return sites


def _lm_root(model: nn.Module) -> str | None:
    try:
        backbone, _ = find_backbone(model)
    except ValueError:
        return None
    return backbone.rsplit(".", 1)[0] if "." in backbone else ""


def expand_sites(patterns: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """Site patterns -> site names, each pattern's hits in the order of `available`. A ``*`` part
    matches one dotted part (`lm.layers.*` is every layer, not every layer's submodules too); a
    ``*`` inside a part matches within it. Names without ``*`` pass through unchecked. KeyError
    names a pattern that matches nothing."""
    sites: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if "*" in pattern:
            regex = re.compile(".".join("[^.]+" if part == "*" else re.escape(part).replace(r"\*", "[^.]*") for part in pattern.split(".")))
            hits = [n for n in available if regex.fullmatch(n)]
        else:
            hits = [pattern]
        if not hits:
            raise KeyError(f"{pattern!r} matches no probe site; this model has {', '.join(available[:12])}, ...")
        sites += [h for h in hits if h not in sites]
    return sites


def resolve_sites(model: nn.Module, names: Names = None) -> dict[str, Site]:
    """Sites selected by `names`: None (all stable names), a name or site pattern (``lm.layers.*``,
    see `expand_sites`), a list of them, a regex (full match) or a predicate over stable names and
    module paths. A pattern matches stable names first, module paths where no stable name fits."""
    stable = stable_sites(model)
    paths = [p for p, _ in model.named_modules() if p]

    def expand(pattern: str) -> list[str]:
        try:
            return expand_sites(pattern, list(stable))
        except KeyError:
            return expand_sites(pattern, list(stable) + paths)

    if isinstance(names, str) or (isinstance(names, Sequence) and not isinstance(names, re.Pattern)):
        names = list(dict.fromkeys(n for pattern in ([names] if isinstance(names, str) else names) for n in expand(pattern)))
    root = _lm_root(model)

    def by_path(path: str) -> Site:
        sequence = root is not None and (root == "" or path == root or path.startswith(root + "."))
        return Site(path, path, "output", sequence)

    def one(name: str) -> Site:
        if name in stable:
            return stable[name]
        if name in set(paths):
            return by_path(name)
        close = [n for n in list(stable) + paths if name.split(".")[0] in n][:8]
        raise KeyError(
            f"unknown probe site {name!r} for {type(model).__name__}; stable names here include {sorted(stable)[:12]}"
            + (f"; similar: {close}" if close else "")
        )

    if names is None:
        return dict(stable)
    if isinstance(names, re.Pattern) or callable(names):
        test = names.fullmatch if isinstance(names, re.Pattern) else names
        chosen = {n: s for n, s in stable.items() if test(n)}
        chosen.update({p: by_path(p) for p in paths if p not in chosen and test(p)})
        if not chosen:
            raise KeyError(f"no probe site of {type(model).__name__} matches {names!r}")
        return chosen
    return {n: one(n) for n in names}


def _tensor_of(value: Any, site: Site) -> Tensor:
    if isinstance(value, Tensor):
        return value
    hidden = getattr(value, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return hidden
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise TypeError(f"probe site {site.name!r} ({site.path}) produced a {type(value).__name__}, not a tensor")


class ActivationCache(dict):
    """name -> tensor, plus `spans` ([B, 2] audio-token spans of the LM sequence) and the sites."""

    def __init__(self, sites: dict[str, Site]) -> None:
        super().__init__()
        self.sites = sites
        self.spans: Tensor | None = None
        self.silent: list[str] = []  # sites whose module never ran (e.g. weights used functionally)

    def tokens(self, name: str) -> list[Tensor]:
        """The audio tokens of each clip at `name`, each [N_i, d].

        LM-sequence sites are cut to each clip's span; a grid [B, T, F, D] (`encoder.out`,
        `encoder.patches`) is flattened time-major to [B, T*F, D]; an encoder's CLS token is dropped;
        other sites keep all their tokens.
        """
        x = self[name]
        if x.dim() == 4:
            x = x.flatten(1, 2)
        if x.dim() != 3:
            raise ValueError(f"site {name!r} holds shape {tuple(x.shape)}, not [batch, tokens, dim]")
        site = self.sites.get(name)
        if site is not None and site.prefix_tokens:
            x = x[:, site.prefix_tokens :]
        if site is not None and site.sequence and self.spans is not None:
            if self.spans.shape[0] != x.shape[0]:
                raise ValueError(f"site {name!r} has batch {x.shape[0]} but the cache holds {self.spans.shape[0]} spans")
            return [x[b, int(s) : int(e)] for b, (s, e) in enumerate(self.spans.tolist())]
        return list(x.unbind(0))


@contextmanager
def hooked(
    model: nn.Module,
    names: Names = None,
    *,
    span: SpanLike = None,
    detach: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[ActivationCache]:
    """Context manager: record the selected sites during any forward(s) run inside it.

    `detach` drops the autograd graph (default); `device="cpu"` offloads; `dtype` casts. A site
    that fires several times (step-by-step decoding) is concatenated along the token dimension.
    Spans are filled in when the block exits, from the first call's inputs.
    """
    sites = resolve_sites(model, names)
    modules = dict(model.named_modules())
    cache = ActivationCache(sites)
    records: dict[str, list[Tensor]] = {n: [] for n in sites}
    first_inputs: list[Any] = []
    handles = []

    def keep(name: str, t: Tensor) -> None:
        kept = t.detach() if detach else t
        moved = kept.to(device=device if device is not None else kept.device, dtype=dtype or kept.dtype)
        # A copy protects the record from in-place updates the model may make later.
        records[name].append(moved.clone() if moved.data_ptr() == t.data_ptr() else moved)

    def on_output(site: Site):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if site.read == "residual" and isinstance(output, (tuple, list)) and len(output) == 2 and isinstance(output[0], Tensor):
                hidden, residual = output
                keep(site.name, hidden if residual is None else hidden + residual)
            elif site.read == "grid":
                keep(site.name, _tensor_of(output, site).permute(0, 2, 3, 1))
            else:
                keep(site.name, _tensor_of(output, site))

        return hook

    def on_input(site: Site):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            value = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()), None))
            keep(site.name, _tensor_of(value, site))

        return hook

    def on_call(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not first_inputs:
            first_inputs.append(
                args[0] if takes_batch(model) and args else (dict(kwargs) if kwargs else args[0] if len(args) == 1 else args)
            )

    try:
        handles.append(model.register_forward_pre_hook(on_call, with_kwargs=True))
        for site in sites.values():
            module = modules[site.path]
            if site.read == "input":
                handles.append(module.register_forward_pre_hook(on_input(site), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(on_output(site)))
        yield cache
    finally:
        for handle in handles:
            handle.remove()
    for name, recs in records.items():
        if recs:
            cache[name] = recs[0] if len(recs) == 1 else torch.cat(recs, dim=1)
        else:
            cache.silent.append(name)
    if cache.silent:
        warnings.warn(
            f"probe sites {cache.silent} never ran during the forward (their module's forward was not called), so they are not in the cache",
            stacklevel=3,
        )
    seq = next((cache[n] for n, s in sites.items() if s.sequence and n in cache), None)
    if seq is not None and seq.dim() >= 2:
        cache.spans = resolve_spans(model, first_inputs[0] if first_inputs else None, span, seq.shape[0], seq.shape[1])


def run_with_cache(
    model: nn.Module,
    inputs: Any,
    names: Names = None,
    *,
    span: SpanLike = None,
    detach: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Any, ActivationCache]:
    """Run `model` on `inputs` (a batch for SAM, a dict of kwargs, a tensor or a tuple) and return
    (output, cache) with the sites chosen by `names`; see `hooked` for the options."""
    with hooked(model, names, span=span, detach=detach, device=device, dtype=dtype) as cache:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            output = call_model(model, inputs)
    return output, cache


def site_names(model: nn.Module) -> list[str]:
    """The stable probe names `model` supports, in order."""
    return list(stable_sites(model))
