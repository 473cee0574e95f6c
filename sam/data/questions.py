"""Instruction data of one scene: classification, closed / open questions, a caption, and 4-choice
reasoning questions in MMAU's shape (question, choices, answer, category, sub-category, difficulty).

Every answer is computed from the scene spec (labels, onsets, offsets, transcripts), so it is true of
the rendered audio by construction. Multiple-choice distractors are chosen so that exactly one choice
is true of the metadata (absent classes, events that do not satisfy the relation, other transcripts).
The reasoning taxonomy follows MMAU test-mini's sound/speech categories. This module must never
look at audio; it only reads specs.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam.data import classes as C
from sam.data.types import TASKS, Example

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six"]
# How many examples of each task one scene yields at most (a random, seed-fixed subset of those that apply).
PER_SCENE = {"classification": 1, "closed": 3, "open": 2, "caption": 1, "reasoning": 2}
CLASSIFICATION_QUESTION = "What sound events are in this audio?"


@dataclass
class Vocabulary:
    """What distractors are drawn from: class names, each class's source group, transcripts of the split."""

    classes: list[str]
    groups: dict[str, str]
    transcripts: list[str]
    transcript_class: dict[str, str] = field(default_factory=dict)  # transcript -> its speech class (language)


def mcq_instruction(question: str, choices: list[str]) -> str:
    """A multiple-choice prompt: the question, lettered options, and how to answer."""
    opts = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return f"{question.strip()}\nChoices:\n{opts}\nAnswer with the text of the correct choice."


def _norm(text: str) -> str:
    return re.sub(r"[^\w ]+", "", text.lower()).strip()  # \w: letters of every script (Cyrillic too)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(label: str) -> str:
    plural = label.endswith("s") or label in ("speech", "music", "fire", "water", "machinery", "gunshot")
    if C.is_speech(label) or label in ("music", "fire", "water", "machinery", "footsteps", "drums", "tabla", "bass"):
        return label
    return label if plural and label != "gunshot" else ("an " if label[0] in "aeiou" else "a ") + label


class _Scene:
    """Derived facts of a spec that questions use."""

    def __init__(self, spec: dict[str, Any], vocab: Vocabulary):
        self.spec, self.vocab = spec, vocab
        self.events = spec["events"]
        self.labels = [e["label"] for e in self.events]  # onset order
        self.all_labels = sorted({lab for e in self.events for lab in e["labels"]})
        self.absent = [c for c in vocab.classes if c not in self.all_labels]
        self.rng = np.random.default_rng(zlib.crc32(spec["id"].encode()))
        self.speech = next((e for e in self.events if C.is_speech(e["label"]) and e.get("transcript")), None)

    def pick(self, seq: list, k: int) -> list:
        idx = self.rng.choice(len(seq), size=min(k, len(seq)), replace=False)
        return [seq[int(i)] for i in idx]

    def overlaps(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        return a["onset"] < b["offset"] and b["onset"] < a["offset"]


# --------------------------------------------------------------------------------------------
# Caption


def caption(spec: dict[str, Any], rng: np.random.Generator | None = None) -> str:
    """One natural sentence: the events' phrases in onset order, saying what follows or overlaps what."""
    rng = rng or np.random.default_rng(zlib.crc32(spec["id"].encode()))
    ev = spec["events"]
    text = _cap(ev[0]["phrase"])
    for _prev, e in zip(ev, ev[1:]):
        if e["onset"] < max(p["offset"] for p in ev[: ev.index(e)]):
            text += str(rng.choice([f", while {e['phrase']} starts over it", f", overlapping with {e['phrase']}"]))
        else:
            text += str(rng.choice([f", followed by {e['phrase']}", f", then {e['phrase']}"]))
    bg = spec.get("background")
    if bg:
        text += f", over {bg['phrase']}"
    return text + "."


# --------------------------------------------------------------------------------------------
# Closed and open questions (answers are short text)


def _closed(s: _Scene) -> list[tuple[str, str, str]]:
    out = [("Which sound classes are present? Answer with class names separated by commas.", ", ".join(s.all_labels), "labels")]
    present = bool(s.rng.random() < 0.5) or not s.absent
    cls = s.pick(s.all_labels, 1)[0] if present else s.pick(s.absent, 1)[0]
    out.append((f"Is there {_article(cls)} in this audio? Answer yes or no.", "Yes" if present else "No", "yes_no"))
    out.append(("How many distinct sound events can be heard?", _cap(NUMBERS[len(s.events)]), "count"))
    if len(s.events) >= 2:
        out.append(("Which sound event starts first?", s.labels[0], "first"))
        out.append(("Which sound event starts last?", s.labels[-1], "last"))
    return out


def _open(s: _Scene) -> list[tuple[str, str, str]]:
    out = []
    e = s.pick(s.events, 1)[0]
    length = e["offset"] - e["onset"]
    out.append(
        (
            f"When can the {e['label']} be heard?",
            f"{_cap(e['phrase'])} starts at about {e['onset']:.1f} seconds and lasts about {length:.1f} seconds.",
            "when",
        )
    )
    if len(s.events) >= 2:
        a, b = s.events[0], s.events[1]
        rel = "While it is still going on" if s.overlaps(a, b) else "After it ends"
        out.append((f"What happens after the {a['label']} starts?", f"{rel}, {b['phrase']} can be heard.", "after"))
    if s.speech:
        pronoun = "He" if s.speech["phrase"].startswith("a man ") else "She"
        out.append(("What does the speaker say?", f'{pronoun} says: "{s.speech["transcript"]}"', "transcript"))
    out.append(("Describe the sounds in this audio.", caption(s.spec, s.rng), "describe"))
    return out


# --------------------------------------------------------------------------------------------
# Reasoning: 4-choice questions, exactly one true choice


@dataclass
class MCQ:
    question: str
    answer: str
    distractors: list[str]
    category: str
    sub_category: str
    kind: str  # MMAU's "task": sound | speech
    difficulty: str


def _mcq_first(s: _Scene) -> MCQ | None:
    if len(s.events) < 2:
        return None
    wrong = s.labels[1:] + s.pick(s.absent, 3)
    return MCQ(
        "Based on the given audio, which of the following sounds is heard first?",
        s.labels[0],
        wrong[:3],
        "Reasoning",
        "Temporal Event Reasoning",
        "sound",
        "hard" if len(s.events) == 3 else "medium",
    )


def _mcq_last(s: _Scene) -> MCQ | None:
    if len(s.events) < 2:
        return None
    wrong = s.labels[:-1] + s.pick(s.absent, 3)
    return MCQ(
        "Based on the given audio, which of the following sounds starts last?",
        s.labels[-1],
        wrong[:3],
        "Reasoning",
        "Temporal Event Reasoning",
        "sound",
        "hard" if len(s.events) == 3 else "medium",
    )


def _mcq_after(s: _Scene) -> MCQ | None:
    if len(s.events) < 2:
        return None
    return MCQ(
        f"Based on the given audio, which sound begins right after the {s.labels[0]}?",
        s.labels[1],
        s.pick(s.absent, 3),
        "Reasoning",
        "Event-Based Sound Reasoning",
        "sound",
        "medium",
    )


def _mcq_longest(s: _Scene) -> MCQ | None:
    if len(s.events) < 2:
        return None
    dur = sorted(((e["offset"] - e["onset"], e["label"]) for e in s.events), reverse=True)
    if dur[0][0] - dur[1][0] < 0.5:  # too close to call by ear: skip rather than risk two answers
        return None
    wrong = [lab for _, lab in dur[1:]] + s.pick(s.absent, 3)
    return MCQ(
        "For the given audio, identify which of the following sounds can be heard for the longest duration.",
        dur[0][1],
        wrong[:3],
        "Reasoning",
        "Temporal Event Reasoning",
        "sound",
        "hard",
    )


def _mcq_count(s: _Scene) -> MCQ | None:
    n = len(s.events)
    others = [NUMBERS[i] for i in range(1, 6) if i != n]
    return MCQ(
        "How many distinct sound events can be heard in the audio?",
        NUMBERS[n],
        s.pick(others, 3),
        "Reasoning",
        "Counting",
        "sound",
        "easy" if n == 1 else "medium",
    )


def _mcq_combination(s: _Scene) -> MCQ | None:
    if len(s.events) < 2 or len(s.absent) < 3:
        return None
    a, b = sorted(s.pick(s.labels, 2))
    wrong = []
    for x in s.pick(s.absent, 3):
        keep = a if s.rng.random() < 0.5 else b
        wrong.append(" and ".join(sorted([keep, x])))
    return MCQ(
        "Based on the audio, which combination of sounds can be identified?",
        f"{a} and {b}",
        wrong,
        "Information Extraction",
        "Sound-Based Event Recognition",
        "sound",
        "medium",
    )


def _mcq_overlap(s: _Scene) -> MCQ | None:
    for a in s.events:
        partners = [b for b in s.events if b is not a and s.overlaps(a, b)]
        if len(partners) == 1:
            others = [b["label"] for b in s.events if b is not a and b is not partners[0]]
            return MCQ(
                f"Based on the given audio, which sound can be heard at the same time as the {a['label']}?",
                partners[0]["label"],
                (others + s.pick(s.absent, 3))[:3],
                "Reasoning",
                "Event-Based Sound Reasoning",
                "sound",
                "hard",
            )
    return None


def _mcq_presence(s: _Scene) -> MCQ | None:
    return MCQ(
        "Which of the following sounds is present in the audio?",
        s.pick(s.all_labels, 1)[0],
        s.pick(s.absent, 3),
        "Information Extraction",
        "Sound-Based Event Recognition",
        "sound",
        "easy",
    )


def _mcq_source(s: _Scene) -> MCQ | None:
    present = {s.vocab.groups[lab] for lab in s.all_labels if lab in s.vocab.groups}
    absent = sorted(set(s.vocab.groups.values()) - present)
    if not present or len(absent) < 3:
        return None
    return MCQ(
        "Based on the given audio, which of the following is a source of one of the sounds?",
        s.pick(sorted(present), 1)[0],
        s.pick(absent, 3),
        "Reasoning",
        "Acoustic Source Inference",
        "sound",
        "medium",
    )


def _mcq_speech(s: _Scene) -> MCQ | None:
    if not s.speech:
        return None
    said = s.speech["transcript"]
    lang = s.speech["label"]  # distractors in the speaker's language: another language would give it away
    pool = [t for t in s.vocab.transcripts if _norm(t) != _norm(said) and s.vocab.transcript_class.get(t, lang) == lang]
    if len(pool) < 3:
        return None
    return MCQ(
        "What does the speaker say in the audio?", said, s.pick(pool, 3), "Reasoning", "Conversational Fact Retrieval", "speech", "medium"
    )


MCQ_MAKERS: list[Callable[[_Scene], MCQ | None]] = [
    _mcq_first,
    _mcq_last,
    _mcq_after,
    _mcq_longest,
    _mcq_count,
    _mcq_combination,
    _mcq_overlap,
    _mcq_presence,
    _mcq_source,
    _mcq_speech,
]


def _reasoning(s: _Scene) -> list[MCQ]:
    out = []
    for make in MCQ_MAKERS:
        q = make(s)
        if q is not None and len(q.distractors) == 3:
            out.append(q)
    return out


# --------------------------------------------------------------------------------------------


def scene_examples(spec: dict[str, Any], tasks: list[str] | tuple[str, ...], vocab: Vocabulary) -> list[Example]:
    """Examples of one scene for each requested task (at most PER_SCENE[task] each, seed-fixed subset)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    s = _Scene(spec, vocab)
    meta = {"scene": spec["id"], "events": [{k: e[k] for k in ("clip", "label", "onset", "offset")} for e in s.events]}
    out: list[Example] = []

    def add(task: str, k: int, instruction: str, answer: str, kind: str, **extra: Any) -> None:
        out.append(
            Example(
                f"{spec['id']}-{task}-{k}",
                spec,
                instruction,
                answer,
                task,
                list(s.all_labels),
                extra.pop("choices", None),
                {**meta, "question_type": kind, **extra},
            )
        )

    for task in TASKS:
        if task not in tasks:
            continue
        # One generator per task, so a task's questions do not depend on which other tasks were asked for.
        s.rng = np.random.default_rng([zlib.crc32(spec["id"].encode()), zlib.crc32(task.encode())])
        if task == "classification":
            add(task, 0, CLASSIFICATION_QUESTION, ", ".join(s.labels), "classification")
        elif task == "caption":
            add(
                task,
                0,
                str(s.rng.choice(["Write a caption for this audio.", "Describe the audio in one sentence."])),
                caption(spec, s.rng),
                "caption",
            )
        elif task in ("closed", "open"):
            items = _closed(s) if task == "closed" else _open(s)
            for k, (q, a, kind) in enumerate(s.pick(items, PER_SCENE[task])):
                add(task, k, q, a, kind)
        else:
            for k, q in enumerate(s.pick(_reasoning(s), PER_SCENE[task])):
                choices = [q.answer] + q.distractors
                choices = [choices[int(i)] for i in s.rng.permutation(4)]
                add(
                    task,
                    k,
                    mcq_instruction(q.question, choices),
                    q.answer,
                    q.sub_category,
                    choices=choices,
                    question=q.question,
                    category=q.category,
                    **{"sub-category": q.sub_category},
                    difficulty=q.difficulty,
                    mmau_task=q.kind,
                )
    return out
