"""The one example type every data source produces (scene composer and real-dataset readers alike).

Training, evaluation and the experiments consume only `Example`, so a new dataset needs a reader
that yields these and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("classification", "closed", "open", "caption", "reasoning")


@dataclass
class Example:
    """One (audio, instruction, answer) triple.

    audio: a path to an audio file, or a scene spec (dict) that `sam.data.scenes.render_scene` turns
        into a waveform deterministically.
    task: one of TASKS. labels: class names present (multi-label), for classification metrics.
    choices: the options of a multiple-choice question (answer is one of them), else None.
    metadata: free-form provenance (source ids, onsets, dataset row, MMAU category...).
    """

    id: str
    audio: str | dict[str, Any]
    instruction: str
    answer: str
    task: str
    labels: list[str] = field(default_factory=list)
    choices: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
