"""Scene composer: fixed-length mixtures of 1..max_events real corpus clips (+ optional background)
with exact onsets, split by source clip, deterministic from a seed.

A scene *spec* is a JSON-able dict (id, split, seconds, events with clip ids / onsets / offsets /
gains, background); `render_scene` turns it into the same waveform every time. Because corpus clips
are trimmed to where their sound starts, an event's `onset` is where its sound starts in the mix.
Every clip (events and backgrounds) belongs to exactly one of train / valid / test.

This module never invents labels: every label, phrase and transcript comes from the manifest.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from sam.data import classes as C
from sam.data.corpus import SAMPLE_RATE, CorpusError, read_class_map, read_manifest

SPLITS = ("train", "valid", "test")
TARGET_RMS = 0.1  # events sit around -20 dBFS before their random gain
GAIN_DB = (-6.0, 0.0)
NOISE_RMS = 10 ** (-50 / 20)  # background noise floor, 30 dB under the events
AMBIENCE_RMS = 10 ** (-40 / 20)
MIN_ONSET_GAP = 0.5  # seconds between onsets, so "which comes first" has one answer
FADE_OUT = 0.02  # seconds of fade on events cut to fit the scene
SPEECH_WEIGHT = 4.0
MIN_TEST = 5  # source clips of a class in the test split (and in valid), so its test metric rests on several clips


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator fixed by `keys` (strings hashed with crc32, stable across runs and machines)."""
    return np.random.default_rng([k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys])


def assign_splits(
    rows: list[dict[str, Any]], classes: list[str], split_seed: int = 0, fractions: tuple[float, float] = (0.1, 0.1)
) -> dict[str, str]:
    """clip id -> split. Stratified by each clip's first class (or ambience) so every class with
    >= 3 clips has at least one clip in each split, and every class with >= `MIN_TEST` * 5 clips at least
    `MIN_TEST` in valid and in test; a clip is in exactly one split."""
    groups: dict[str, list[str]] = {}
    known = set(classes)
    for r in rows:
        key = next((lab for lab in r["labels"] if lab in known), C.AMBIENCE if C.AMBIENCE in r["labels"] else None)
        if key is not None:
            groups.setdefault(key, []).append(r["id"])
    out: dict[str, str] = {}
    for key, ids in sorted(groups.items()):
        ids = sorted(ids)
        order = _rng(split_seed, key).permutation(len(ids))
        least = MIN_TEST if len(ids) >= 5 * MIN_TEST else 1
        n_val = max(least, round(fractions[0] * len(ids))) if len(ids) >= 3 else 0
        n_test = max(least, round(fractions[1] * len(ids))) if len(ids) >= 3 else 0
        for rank, j in enumerate(order):
            out[ids[j]] = "test" if rank < n_test else "valid" if rank < n_test + n_val else "train"
    return out


class SceneComposer:
    """Composes scenes from the corpus under `corpus_root` (the DataConfig.root holding ``corpus/``)."""

    def __init__(
        self,
        corpus_root: str | Path = "data",
        seconds: float = 10.0,
        max_events: int = 3,
        background: bool = True,
        seed: int = 0,
        split_seed: int = 0,
    ):
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        if seconds < 1.0:
            raise ValueError(f"seconds must be >= 1, got {seconds}")
        self.root = Path(corpus_root)
        self.seconds, self.max_events, self.background, self.seed = float(seconds), int(max_events), bool(background), int(seed)
        rows = read_manifest(self.root)
        self.clips = {r["id"]: r for r in rows}
        self.class_map = read_class_map(self.root)["classes"]
        self.classes = sorted(self.class_map)
        if len(self.classes) < 4:
            raise CorpusError(f"{self.root}: only {len(self.classes)} classes with enough clips; scenes need >= 4")
        self.split_of = assign_splits(rows, self.classes, split_seed)
        self.max_event_samples = int(round(0.5 * self.seconds * SAMPLE_RATE))
        self.pools: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
        for cid, split in sorted(self.split_of.items()):
            row = self.clips[cid]
            key = next((lab for lab in row["labels"] if lab in self.class_map), C.AMBIENCE)
            if C.is_speech(key) and (not row.get("transcript") or row["num_samples"] > self.max_event_samples):
                continue  # speech is only used whole, so its transcript is exactly what is heard
            self.pools[split].setdefault(key, []).append(cid)

    # ---------------------------------------------------------------------------------------
    def make_split(self, split: str, n: int) -> list[dict[str, Any]]:
        """`n` scene specs of `split`; scene i depends only on (seed, split, i)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
        return [self.make_scene(split, i) for i in range(n)]

    def make_scene(self, split: str, index: int) -> dict[str, Any]:
        rng = _rng(self.seed, split, index)
        pool = self.pools[split]
        available = sorted(k for k in pool if k != C.AMBIENCE)
        k = int(rng.integers(1, self.max_events + 1))
        events: list[dict[str, Any]] = []
        used: set[str] = set()
        # Speech has by far the most clips (and transcripts); draw it a few times more often than other
        # classes, SPEECH_WEIGHT shared among the languages.
        n_speech = max(1, sum(C.is_speech(c) for c in available))
        w = np.array([SPEECH_WEIGHT / n_speech if C.is_speech(c) else 1.0 for c in available])
        for cls in rng.choice(available, size=len(available), replace=False, p=w / w.sum()):
            if len(events) == k:
                break
            candidates = [c for c in pool[str(cls)] if not set(self.clips[c]["labels"]) & used]
            if not candidates:
                continue
            row = self.clips[candidates[int(rng.integers(len(candidates)))]]
            labels = [lab for lab in row["labels"] if lab in self.class_map]
            used.update(labels)
            n = min(row["num_samples"], self.max_event_samples)
            events.append(
                {
                    "clip": row["id"],
                    "label": str(cls),
                    "labels": labels,
                    "samples": n,
                    "truncated": n < row["num_samples"],
                    "gain_db": round(float(rng.uniform(*GAIN_DB)), 2),
                    "clip_rms": row["rms"],
                    "path": row["path"],
                    "phrase": row["phrase"],
                    "transcript": row.get("transcript"),
                    "caption": row["caption"],
                    "caption_kind": row["caption_kind"],
                    "source": row["source"],
                }
            )
        self._place(events, rng)
        events.sort(key=lambda e: e["onset_sample"])
        spec: dict[str, Any] = {
            "id": f"{split}-s{self.seed}-{index:05d}",
            "split": split,
            "seed": self.seed,
            "seconds": self.seconds,
            "sample_rate": SAMPLE_RATE,
            "events": events,
            "background": self._background(split, rng),
        }
        return spec

    def _place(self, events: list[dict[str, Any]], rng: np.random.Generator) -> None:
        """Random onsets with >= MIN_ONSET_GAP between any two (sample-exact; offsets follow)."""
        total = int(round(self.seconds * SAMPLE_RATE))
        gap = int(MIN_ONSET_GAP * SAMPLE_RATE)
        for _attempt in range(200):
            onsets = [int(rng.integers(0, total - e["samples"] + 1)) for e in events]
            s = sorted(onsets)
            if all(b - a >= gap for a, b in zip(s, s[1:])):
                break
        else:  # evenly spaced fallback: always satisfies the gap for <= 5 events in >= 5 s
            step = (total - max(e["samples"] for e in events)) // max(1, len(events))
            onsets = [i * step for i in range(len(events))]
        for e, on in zip(events, onsets):
            e["onset_sample"] = on
            e["onset"] = round(on / SAMPLE_RATE, 4)
            e["offset"] = round((on + e["samples"]) / SAMPLE_RATE, 4)

    def _background(self, split: str, rng: np.random.Generator) -> dict[str, Any] | None:
        if not self.background:
            return None
        amb = self.pools[split].get(C.AMBIENCE, [])
        if amb and rng.random() < 0.5:
            row = self.clips[amb[int(rng.integers(len(amb)))]]
            start = int(rng.integers(0, max(1, row["num_samples"] - int(self.seconds * SAMPLE_RATE))))
            return {
                "kind": "ambience",
                "clip": row["id"],
                "path": row["path"],
                "clip_rms": row["rms"],
                "start_sample": start,
                "rms": AMBIENCE_RMS,
                "phrase": "a quiet ambient hum",
            }
        return {"kind": "noise", "seed": int(rng.integers(2**31)), "rms": NOISE_RMS, "phrase": "faint background noise"}

    # ---------------------------------------------------------------------------------------
    def scene_examples(self, spec: dict[str, Any], tasks: list[str] | tuple[str, ...]) -> list:
        """Examples (instruction/answer pairs) of one scene for the requested tasks."""
        from sam.data.questions import scene_examples

        return scene_examples(spec, tasks, self.vocabulary(spec["split"]))

    def vocabulary(self, split: str):
        """Class names, source groups and the split's transcripts (distractors for questions)."""
        from sam.data.questions import Vocabulary

        cache = getattr(self, "_vocab", {})
        if split not in cache:
            said = {self.clips[c]["transcript"]: key for key, ids in self.pools[split].items() if C.is_speech(key) for c in ids}
            cache[split] = Vocabulary(self.classes, {c: self.class_map[c]["group"] for c in self.classes}, sorted(said), said)
            self._vocab = cache
        return cache[split]


# --------------------------------------------------------------------------------------------
# Rendering

_CLIP_CACHE: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()


def _read(root: Path, rel: str, start: int, frames: int) -> np.ndarray:
    key = (str(root / rel), start, frames)
    hit = _CLIP_CACHE.get(key)
    if hit is not None:
        _CLIP_CACHE.move_to_end(key)
        return hit
    wave, sr = sf.read(root / rel, start=start, frames=frames, dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE:
        raise CorpusError(f"{root / rel}: sample rate {sr}, expected {SAMPLE_RATE}; rebuild the corpus")
    _CLIP_CACHE[key] = wave
    if len(_CLIP_CACHE) > 512:
        _CLIP_CACHE.popitem(last=False)
    return wave


def render_scene(
    spec: dict[str, Any], corpus_root: str | Path, sample_rate: int = SAMPLE_RATE, skip_events: tuple[int, ...] = ()
) -> np.ndarray:
    """The scene's waveform (float32 mono, `seconds` long). Same spec -> same samples.

    `skip_events` leaves out events by index (tests use it to isolate one event's contribution).
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the corpus is stored at {SAMPLE_RATE} Hz; render at that rate, not {sample_rate}")
    root = Path(corpus_root)
    total = int(round(spec["seconds"] * SAMPLE_RATE))
    mix = np.zeros(total, dtype=np.float64)
    bg = spec.get("background")
    if bg and bg["kind"] == "noise":
        mix += np.random.default_rng(bg["seed"]).standard_normal(total) * bg["rms"]
    elif bg and bg["kind"] == "ambience":
        wave = _read(root, bg["path"], bg["start_sample"], total)
        wave = np.tile(wave, -(-total // len(wave)))[:total]  # loop short ambiences
        mix += wave * (bg["rms"] / max(bg["clip_rms"], 1e-6))
    for i, e in enumerate(spec["events"]):
        if i in skip_events:
            continue
        wave = _read(root, e["path"], 0, e["samples"]).astype(np.float64)
        scale = TARGET_RMS * 10 ** (e["gain_db"] / 20) / max(e["clip_rms"], 1e-6)
        peak = np.abs(wave).max() * scale
        if peak > 0.9:  # impulsive clips have low RMS; keep their peaks from dominating the mix
            scale *= 0.9 / peak
        wave = wave * scale
        if e["truncated"]:
            n = min(len(wave), int(FADE_OUT * SAMPLE_RATE))
            wave[-n:] *= np.linspace(1.0, 0.0, n)
        on = e["onset_sample"]
        mix[on : on + len(wave)] += wave
    peak = np.abs(mix).max()
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32)
