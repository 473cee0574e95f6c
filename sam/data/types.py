"""The one example type every data source produces (scene composer and real-dataset readers alike).

Training, evaluation and the experiments consume only `Example`, so a new dataset needs a reader
that yields these and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def label_matrix(examples: Sequence[Example], classes: Sequence[str]) -> np.ndarray:
    """The 0/1 multi-hot matrix [examples, classes] of the examples' labels. Labels outside `classes`
    are skipped; a caller that must refuse them checks first."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(examples), len(classes)), dtype=np.int64)
    for row, ex in enumerate(examples):
        for label in ex.labels:
            if label in index:
                y[row, index[label]] = 1
    return y
