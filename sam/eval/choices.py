"""Multiple choice by likelihood: a second protocol beside MMAU's string match, scoring the weights, not the
generated text (the choice the model finds most likely as its response).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sam.data.types import Example
from sam.eval.annotate import accuracy_ci, question_baselines
from sam.eval.generation import default_audio_loader, loaded_batches


def choice_likelihoods(
    model: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    audio_loader: Callable[[Example], Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The model's log-likelihood of answering each multiple-choice example with each of its choices.

    One row per (example, choice): id, choice (its index), logprob (sum over the response's tokens
    and closing eos), tokens, error. `model` needs `continuation_logprobs(audio, prompts,
    continuations)` (`sam.SAM` has it); a batch holds about `batch_size` scored responses. This is
    the likelihood protocol of LM evaluation suites (the choice the model finds most probable),
    which, unlike MMAU's string match, does not depend on the model writing a well-formed answer;
    report it beside MMAU's rule, never instead of it. An example whose audio fails to load, or
    whose batch raises, gets its error on every row and the run goes on; if nothing succeeds the
    first error is raised. Examples without choices are an error naming the first one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = list(examples)
    bad = [ex.id for ex in examples if not ex.choices]
    if bad:
        raise ValueError(
            f"choice_likelihoods: example {bad[0]!r} has no choices ({len(bad)} such examples); pass multiple-choice examples only"
        )
    if not hasattr(model, "continuation_logprobs"):
        raise TypeError(f"model must have continuation_logprobs(audio, prompts, continuations), got {type(model).__name__}")
    load = audio_loader or default_audio_loader()
    per_batch = max(1, batch_size // max(len(ex.choices or ()) for ex in examples)) if examples else 1
    rows: list[dict[str, Any]] = []
    for batch, audio, failed in loaded_batches(examples, per_batch, load, progress=progress, desc="choice likelihoods", unit="question"):
        rows += [
            dict(id=ex.id, choice=i, logprob=None, tokens=None, error=error) for ex, error in failed for i in range(len(ex.choices or ()))
        ]
        if batch:
            flat = [(k, i, c) for k, ex in enumerate(batch) for i, c in enumerate(ex.choices or ())]
            try:
                logp, count = model.continuation_logprobs(
                    [audio[k] for k, _, _ in flat], [batch[k].instruction for k, _, _ in flat], [c for _, _, c in flat]
                )
                rows += [
                    dict(id=batch[k].id, choice=i, logprob=float(lp), tokens=int(n), error=None)
                    for (k, i, _), lp, n in zip(flat, logp.tolist(), count.tolist())
                ]
            except Exception as e:
                rows += [
                    dict(id=batch[k].id, choice=i, logprob=None, tokens=None, error=f"score: {type(e).__name__}: {e}") for k, i, _ in flat
                ]
    frame = pd.DataFrame(rows, columns=["id", "choice", "logprob", "tokens", "error"])
    if len(frame) and frame["logprob"].isna().all():
        raise RuntimeError(f"every example failed; first error: {frame['error'].iloc[0]}")
    return frame


def score_choice_likelihoods(examples: Sequence[Example], likelihoods: pd.DataFrame) -> dict[str, Any]:
    """Accuracy of picking the most likely choice, from `choice_likelihoods`' table.

    accuracy: the choice with the highest summed log-probability; accuracy_per_token: the highest
    mean log-probability per token (no preference for short choices). Ties go to the first choice.
    An example is scored only when every one of its choices was scored; the others are counted in
    n_failed. chance, uniform, prior and ci (95% over clips): as for MMAU's rule (`sam.eval.annotate.question_baselines`)
    over the scored examples.
    """
    need = {"id", "choice", "logprob", "tokens"}
    if not need <= set(likelihoods.columns):
        raise ValueError(f"likelihood table lacks columns {sorted(need - set(likelihoods.columns))}")
    by_id = {k: g.sort_values("choice") for k, g in likelihoods.groupby("id", sort=False)}
    hits, hits_norm, scored, failed = [], [], [], 0
    for ex in examples:
        if not ex.choices:
            raise ValueError(f"example {ex.id!r} has no choices")
        g = by_id.get(ex.id)
        if g is None or len(g) != len(ex.choices) or g["logprob"].isna().any():
            failed += 1
            continue
        truth = ex.choices.index(ex.answer)
        lp = g["logprob"].to_numpy(dtype=float)
        hits.append(int(np.argmax(lp)) == truth)
        hits_norm.append(int(np.argmax(lp / g["tokens"].to_numpy(dtype=float))) == truth)
        scored.append(ex)
    if not hits:
        raise ValueError(f"no example has every choice scored ({failed} failed)")
    return {
        "n": len(hits),
        "n_failed": failed,
        "accuracy": float(np.mean(hits)),
        "accuracy_per_token": float(np.mean(hits_norm)),
        **question_baselines(scored),
        "ci": {"accuracy": accuracy_ci(hits, scored), "accuracy_per_token": accuracy_ci(hits_norm, scored)},
        "rule": "most likely choice (summed / per-token log-probability of the choice as the response)",
    }
