"""The audio-use gate: does a trained run listen? Rules and the rows of ``audio_use.csv``.

For each LM size and seed, on the preset's test scenes, at the run's final stage:
- G1 classification: (mAP - random) >= f x (probe ceiling - random), f = 0.6 (gpu) / 0.4 (cpu and
  smoke), and mAP >= random + 10 pp (gpu) / 5 pp (cpu and smoke): a weak encoder must not make the
  gate easier. random = the expected mAP of random scores on the same test scenes; probe ceiling =
  the mAP of one logistic regression per class on the run's own mean-pooled encoder output.
- G2 audio use: own minus other-audio mAP >= 5 pp and captions' CIDEr-D (x100) own minus other >= 10,
  each with the 95% bootstrap CI over test clips (paired) above 0.
- G3 reasoning (MMAU's string-match rule, after the reasoning stage): accuracy >= 45% (gpu) / 35%
  (cpu and smoke) and own minus other audio >= 10 (gpu) / 5 (cpu and smoke) pp.
A rule that needs a number that was not measured reads passes = None (empty in the CSV) with a note,
unless a measured part already fails it (then False).
"""

from __future__ import annotations

import math
from typing import Any

COLUMNS = (
    "lm_size",
    "seed",
    "metric",
    "own",
    "other_audio",
    "random_baseline",
    "probe_ceiling",
    "gate",
    "passes",
    "ci_low",
    "ci_high",
    "note",
)
G1_FRACTION = {"gpu": 0.6, "cpu": 0.4, "smoke": 0.4, "paper": 0.6}
G1_MARGIN = {"gpu": 10.0, "cpu": 5.0, "smoke": 5.0, "paper": 10.0}
G2_MAP, G2_CIDER = 5.0, 10.0
G3_ACCURACY = {"gpu": 45.0, "cpu": 35.0, "smoke": 35.0, "paper": 45.0}
G3_AUDIO_USE = {"gpu": 10.0, "cpu": 5.0, "smoke": 5.0, "paper": 10.0}


def _known(*values: Any) -> bool:
    return all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values)


def _all(parts: list[bool | None]) -> bool | None:
    """False if any part fails, None if none fails but one is unknown, else True."""
    if any(p is False for p in parts):
        return False
    return None if any(p is None for p in parts) else True


def g1(preset: str, own: float, random: float, probe: float | None) -> tuple[bool | None, str, str]:
    """(passes, rule, note) of G1 for mAP `own`, random baseline and probe ceiling (percent)."""
    f, margin = G1_FRACTION[preset], G1_MARGIN[preset]
    rule = f"G1: mAP - random >= {f} x (probe ceiling - random) and mAP >= random + {margin:g} pp"
    margin_ok = bool(own >= random + margin)
    probe_ok = bool(own - random >= f * (probe - random)) if _known(probe) else None
    note = "" if _known(probe) else "probe ceiling not measured"
    if not margin_ok:
        note = "; ".join(x for x in (f"mAP {own:.1f} < random {random:.1f} + {margin:g} pp", note) if x)
    return _all([margin_ok, probe_ok]), rule, note


def g2(metric: str, diff: float | None, ci_low: float | None) -> tuple[bool | None, str, str]:
    """(passes, rule, note) of G2 for `metric` ("mAP" or "CIDEr-D") from own - other and its CI's lower end."""
    need = G2_MAP if metric == "mAP" else G2_CIDER
    rule = f"G2: own - other audio {metric} >= {need:g} with its 95% CI above 0"
    if not _known(diff, ci_low):
        return None, rule, "other-audio control not measured"
    return bool(diff >= need and ci_low > 0), rule, ""


def g3(preset: str, own: float, diff: float | None) -> tuple[bool | None, str, str]:
    """(passes, rule, note) of G3 for reasoning accuracy `own` and own - other audio (percent)."""
    acc, use = G3_ACCURACY[preset], G3_AUDIO_USE[preset]
    rule = f"G3: reasoning accuracy (MMAU string match) >= {acc:g}% and own - other audio >= {use:g} pp"
    parts = [bool(own >= acc), bool(diff >= use) if _known(diff) else None]
    note = "" if _known(diff) else "other-audio control not measured"
    return _all(parts), rule, note


def row(
    lm_size: Any,
    seed: Any,
    metric: str,
    own: float,
    gate_result: tuple[bool | None, str, str],
    *,
    other_audio: float | None = None,
    random_baseline: float | None = None,
    probe_ceiling: float | None = None,
    ci: tuple[float, float] = (math.nan, math.nan),
    note: str = "",
) -> dict[str, Any]:
    """One row of audio_use.csv (COLUMNS); `ci` is the 95% CI of own - other audio."""
    passes, rule, why = gate_result
    nan = math.nan
    return dict(
        lm_size=lm_size,
        seed=seed,
        metric=metric,
        own=own,
        other_audio=nan if other_audio is None else other_audio,
        random_baseline=nan if random_baseline is None else random_baseline,
        probe_ceiling=nan if probe_ceiling is None else probe_ceiling,
        gate=rule,
        passes=passes,
        ci_low=ci[0],
        ci_high=ci[1],
        note="; ".join(x for x in (why, note) if x),
    )
