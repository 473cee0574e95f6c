"""Probe rows of a trained model: tau-effective rank and similarity of the audio tokens per site, and mean SSM
state-update distances per LM layer (`probes`), as the tidy records the scripts' tables and figures read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sam.config import ExperimentConfig


def token_rows(model: Any, batch: dict[str, Any], sites: Sequence[str], tau: float = 0.99, **labels: Any) -> list[dict]:
    """tau-effective rank (raw, normalized, and over windows of as many tokens as the concat layout
    gives: one per time step of the encoder grid) and token similarity of each clip's audio tokens per site."""
    import probes
    from probes.tables import token_measures

    with torch.no_grad():
        _, cache = probes.run_with_cache(model, batch, list(sites), device="cpu", dtype=torch.float64)
    window = model.audio_tower.grid_shape(batch["fbank"].shape[1])[0]
    t = token_measures(cache, list(sites), taus=(tau,), window=window)
    t = t[t.measure.isin(["tau_rank", "tau_rank_normalized", "tau_rank_window", "similarity"])]
    return [{**labels, **r} for r in t[["site", "clip", "measure", "value", "tokens"]].to_dict("records")]


def state_rows(model: Any, batch: dict[str, Any], **labels: Any) -> list[dict]:
    """Mean state-update distance (absolute and relative) per LM layer over heads, audio tokens and clips."""
    import probes
    from probes.tables import state_update_means

    per = state_update_means(probes.state_update_distance(model, batch))
    per = per.melt(id_vars=["layer", "clip"], value_vars=["distance", "relative"], var_name="measure")
    return [{**labels, **r} for r in per.to_dict("records")]


def last_layer(cfg: ExperimentConfig) -> str:
    return f"lm.layers.{cfg.model.lm.n_layer - 1}"


def audio_token_stats(model: Any, audio: torch.Tensor) -> dict[str, float]:
    """Audio tokens [clips, N, d] against the LM's text embeddings: their mean norms, and the share of the
    tokens' energy that varies across clips (the rest is a prefix common to every clip)."""
    audio = audio.float()
    text = model.language_model.get_input_embeddings().weight.detach().float()
    varying = ((audio - audio.mean(0, keepdim=True)) ** 2).sum(-1).mean() / (audio**2).sum(-1).mean()
    return {
        "audio_token_norm": float(audio.norm(dim=-1).mean()),
        "text_embedding_norm": float(text.norm(dim=-1).mean()),
        "energy_varying_across_clips": float(varying),
    }


def log_mel_stats(fbank: torch.Tensor) -> torch.Tensor:
    """Each log-mel band's mean and standard deviation over time ([..., frames, mel] -> [..., 2 mel]):
    the features of the floor a trained encoder should beat."""
    return torch.cat([fbank.mean(dim=-2), fbank.std(dim=-2)], dim=-1)
