"""Batched generation of answers for `Example`s: one answer per distinct (audio, instruction), errors listed per item.

The runner needs only a `generate(audio_list, prompts, max_new_tokens) -> list[str]` callable (or an object
with that `generate` method, such as `sam.SAM`); it never imports the model class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sam.data.types import Example

Generate = Callable[[list[Any], list[str], int], list[str]]


def default_audio_loader(corpus_root: str | Path = "data", sample_rate: int = 16000) -> Callable[[Example], np.ndarray]:
    """Example -> waveform: files through `sam.model.audio.load_audio`, scene specs through `render_scene`."""

    def load(example: Example) -> np.ndarray:
        if isinstance(example.audio, dict):
            from sam.data.scenes import render_scene

            return np.asarray(render_scene(example.audio, corpus_root), dtype=np.float32)
        from sam.model.audio import load_audio

        return load_audio(example.audio, sample_rate=sample_rate)

    return load


def generation_key(example: Example) -> str:
    audio = example.audio if isinstance(example.audio, str) else json.dumps(example.audio, sort_keys=True, default=str)
    return json.dumps([audio, example.instruction])


def resolve_generate(model: Any) -> Generate:
    if hasattr(model, "generate") and callable(model.generate):
        return lambda audio, prompts, n: model.generate(audio, prompts, max_new_tokens=n)
    if callable(model):
        return lambda audio, prompts, n: model(audio, prompts, n)
    raise TypeError(f"model must have a generate(audio, prompts, max_new_tokens) method or be such a callable, got {type(model).__name__}")


def loaded_batches(
    items: Sequence[Any], size: int, load: Callable[[Any], Any], *, progress: bool, desc: str, unit: str
) -> Iterator[tuple[list[Any], list[Any], list[tuple[Any, str]]]]:
    """`items` in chunks of `size` with their audio loaded, for the batched runners below: yields
    (the items that loaded, their audio, [(item, error)] for those whose audio failed), so a bad item
    is reported and its batch goes on; `sam.progress` counts the items when `progress`."""
    from sam.progress import Progress

    with Progress(desc, len(items), unit=f"{unit}s", enabled=progress) as bar:  # bar on a terminal, lines in a log
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            loaded, audio, failed = [], [], []
            for item in chunk:
                try:
                    audio.append(load(item))
                    loaded.append(item)
                except Exception as e:
                    failed.append((item, f"audio: {type(e).__name__}: {e}"))
            yield loaded, audio, failed
            bar.update(len(chunk))


def generate_predictions(
    model: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    audio_loader: Callable[[Example], Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """One generated answer per example (columns id, prediction, error), in batches.

    Examples with the same audio and instruction (e.g. the five AudioCaps references of a clip)
    are generated once: decoding is greedy, so repeating it would only cost time. An item whose
    audio fails to load, or a batch whose generation raises, gets an error message instead of a
    prediction and the run goes on; if nothing at all succeeds the first error is raised.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generate = resolve_generate(model)
    load = audio_loader or default_audio_loader()
    unique: dict[str, Example] = {}
    for ex in examples:
        unique.setdefault(generation_key(ex), ex)
    keys = list(unique)
    answers: dict[str, tuple[str | None, str | None]] = {}
    for batch_keys, audio, failed in loaded_batches(
        keys, batch_size, lambda k: load(unique[k]), progress=progress, desc="generate", unit="clip"
    ):
        answers.update({key: (None, error) for key, error in failed})
        if batch_keys:
            prompts = [unique[k].instruction for k in batch_keys]
            try:
                texts = generate(audio, prompts, max_new_tokens)
                if not isinstance(texts, (list, tuple)) or len(texts) != len(batch_keys) or not all(isinstance(t, str) for t in texts):
                    raise TypeError(
                        f"generate returned {type(texts).__name__} of {len(texts) if hasattr(texts, '__len__') else '?'} items for {len(batch_keys)} prompts; expected a list of strings"
                    )
                answers.update({k: (t, None) for k, t in zip(batch_keys, texts)})
            except Exception as e:
                answers.update({k: (None, f"generate: {type(e).__name__}: {e}") for k in batch_keys})
    if keys and all(p is None for p, _ in answers.values()):
        raise RuntimeError(f"every example failed; first error: {next(iter(answers.values()))[1]}")
    rows = [{"id": ex.id, "prediction": answers[generation_key(ex)][0], "error": answers[generation_key(ex)][1]} for ex in examples]
    return pd.DataFrame(rows, columns=["id", "prediction", "error"])
