"""Scenes: deterministic from a seed, split by source clip, exact onsets, one true choice per question."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sam.config import preset
from sam.data import build_examples
from sam.data.classes import CLASS_GROUPS
from sam.data.corpus import prepare_corpus
from sam.data.questions import NUMBERS
from sam.data.readers import read_mmau, write_mmau_json
from sam.data.scenes import SPLITS, SceneComposer, render_scene
from sam.data.types import TASKS

ROOT = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="session")
def root() -> Path:
    prepare_corpus(ROOT, progress=False)
    return ROOT


@pytest.fixture(scope="session")
def composer(root) -> SceneComposer:
    return SceneComposer(root, seconds=5.0, max_events=3, background=True, seed=0)


def _dumps(specs) -> str:
    return json.dumps(specs, sort_keys=True)


def test_same_seed_gives_identical_scenes_questions_and_audio(root, composer):
    other = SceneComposer(root, seconds=5.0, max_events=3, background=True, seed=0)
    a, b = composer.make_split("train", 20), other.make_split("train", 20)
    assert _dumps(a) == _dumps(b)
    qa = [dataclasses.asdict(e) for s in a for e in composer.scene_examples(s, TASKS)]
    qb = [dataclasses.asdict(e) for s in b for e in other.scene_examples(s, TASKS)]
    assert json.dumps(qa) == json.dumps(qb)
    assert render_scene(a[3], root).tobytes() == render_scene(b[3], root).tobytes()


def test_different_seeds_give_different_scenes(root, composer):
    other = SceneComposer(root, seconds=5.0, max_events=3, background=True, seed=1)
    a, b = composer.make_split("train", 20), other.make_split("train", 20)
    assert [e["clip"] for s in a for e in s["events"]] != [e["clip"] for s in b for e in s["events"]]
    assert not np.array_equal(render_scene(a[0], root), render_scene(b[0], root))


def test_no_source_clip_is_in_two_splits(composer):
    used = {}
    for split in SPLITS:
        for spec in composer.make_split(split, 150):
            clips = [e["clip"] for e in spec["events"]]
            if spec["background"] and spec["background"]["kind"] == "ambience":
                clips.append(spec["background"]["clip"])
            for c in clips:
                assert used.setdefault(c, split) == split, f"{c} in {used[c]} and {split}"
                assert composer.split_of[c] == split
    assert len({s for s in used.values()}) == 3
    for cls in composer.classes:  # every class can be tested
        assert any(cls in composer.pools["test"] for _ in [0]) or composer.class_map[cls]["clips"] < 3


def test_event_onsets_and_offsets_match_the_rendered_audio(root, composer):
    sr = 16000
    checked = 0
    for spec in composer.make_split("valid", 25):
        full = render_scene(spec, root)
        assert full.shape == (int(spec["seconds"] * sr),) and full.dtype == np.float32
        if np.abs(full).max() >= 0.99:
            continue  # mixture was rescaled: isolate events only in unscaled scenes
        for i, e in enumerate(spec["events"]):
            alone = full.astype(np.float64) - render_scene(spec, root, skip_events=(i,))
            on, off = e["onset_sample"], e["onset_sample"] + e["samples"]
            assert abs(e["onset"] * sr - on) <= 1 and abs(e["offset"] * sr - off) <= 1  # seconds: 0.1 ms precision
            assert np.all(alone[:on] == 0) and np.all(alone[off:] == 0)
            assert np.abs(alone[on : on + 3]).max() > 0  # the sound starts on its first sample
            checked += 1
    assert checked >= 30


def test_rendered_energy_starts_and_ends_where_the_metadata_says(root):
    # Without background the mix is exactly silent outside the events, so 10 ms frame energies
    # locate the first onset and the last offset in the rendered audio itself.
    quiet = SceneComposer(root, seconds=5.0, max_events=3, background=False, seed=3)
    for spec in quiet.make_split("train", 30):
        energy = (render_scene(spec, root).astype(np.float64).reshape(-1, 160) ** 2).mean(axis=1)
        active = np.flatnonzero(energy > 0)
        first = min(e["onset"] for e in spec["events"])
        last = max(e["offset"] for e in spec["events"])
        assert active[0] == round(first * 16000) // 160
        assert abs((active[-1] + 1) / 100 - last) <= 0.01 + 1e-6


def _true_choices(ex) -> list[str]:
    """Choices that are true of the scene metadata, decided independently of the generator."""
    ev = ex.audio["events"]
    labels = {lab for e in ev for lab in e["labels"]}
    q = ex.metadata["question"]
    by_onset = sorted(ev, key=lambda e: e["onset"])
    dur = {e["label"]: e["offset"] - e["onset"] for e in ev}
    rules = [
        (r"heard first", lambda c: c == by_onset[0]["label"]),
        (r"starts last", lambda c: c == by_onset[-1]["label"]),
        (r"right after the (.+)\?", lambda c, m: c == by_onset[[e["label"] for e in by_onset].index(m.group(1)) + 1]["label"]),
        (r"longest duration", lambda c: c in dur and dur[c] == max(dur.values())),
        (r"How many", lambda c: c == NUMBERS[len(ev)]),
        (r"combination", lambda c: all(p in labels for p in c.split(" and "))),
        (
            r"same time as the (.+)\?",
            lambda c, m: any(
                e["label"] == c and e["onset"] < a["offset"] and a["onset"] < e["offset"]
                for a in ev
                if a["label"] == m.group(1)
                for e in ev
                if e is not a
            ),
        ),
        (r"present in the audio", lambda c: c in labels),
        (r"source of one of the sounds", lambda c: c in {CLASS_GROUPS[lab] for lab in labels}),
        (r"speaker say", lambda c: any(e.get("transcript") == c for e in ev)),
    ]
    for pat, rule in rules:
        m = re.search(pat, q)
        if m:
            return [c for c in ex.choices if (rule(c, m) if rule.__code__.co_argcount == 2 else rule(c))]
    raise AssertionError(f"no verifier for question {q!r}")


def test_every_reasoning_question_has_exactly_one_true_choice(composer):
    seen = set()
    for spec in composer.make_split("test", 150):
        for ex in composer.scene_examples(spec, ["reasoning"]):
            assert len(ex.choices) == 4 and len(set(ex.choices)) == 4
            assert _true_choices(ex) == [ex.answer], (ex.instruction, ex.choices, ex.answer)
            assert ex.metadata["category"] and ex.metadata["sub-category"] and ex.metadata["difficulty"]
            seen.add(ex.metadata["sub-category"])
    assert {
        "Temporal Event Reasoning",
        "Counting",
        "Event-Based Sound Reasoning",
        "Conversational Fact Retrieval",
        "Sound-Based Event Recognition",
        "Acoustic Source Inference",
    } <= seen


def test_closed_answers_follow_from_metadata(composer):
    for spec in composer.make_split("train", 40):
        labels = {lab for e in spec["events"] for lab in e["labels"]}
        for ex in composer.scene_examples(spec, ["classification", "closed"]):
            kind = ex.metadata["question_type"]
            if kind == "classification":
                assert ex.answer.split(", ") == [e["label"] for e in spec["events"]]
            elif kind == "yes_no":
                cls = re.search(r"Is there (?:an? )?(.+) in this audio", ex.instruction).group(1)
                assert (ex.answer == "Yes") == (cls in labels)
            elif kind == "count":
                assert ex.answer.lower() == NUMBERS[len(spec["events"])]
            elif kind == "first":
                assert ex.answer == min(spec["events"], key=lambda e: e["onset"])["label"]


def test_build_examples_caches_and_reasoning_exports_to_mmau_json(root, tmp_path):
    cfg = preset("smoke").data
    cfg.root = str(root)
    first = build_examples(cfg, "test", ["caption", "reasoning"])
    again = build_examples(cfg, "test", ["caption", "reasoning"])
    assert [dataclasses.asdict(e) for e in first] == [dataclasses.asdict(e) for e in again]
    assert {e.task for e in first} == {"caption", "reasoning"}
    reasoning = [e for e in first if e.task == "reasoning"]
    n = write_mmau_json(reasoning, tmp_path / "sam-mmau.json")
    back, rep = read_mmau(tmp_path / "sam-mmau.json")
    assert n == len(reasoning) == len(back) and not rep.bad
    assert [(b.answer, b.choices, b.audio) for b in back] == [(e.answer, e.choices, e.audio) for e in reasoning]
    write_mmau_json(reasoning[:2], tmp_path / "rendered.json", audio_dir=tmp_path / "wavs", corpus_root=root)
    rendered, rep = read_mmau(tmp_path / "rendered.json")
    assert rep.kept == 2 and Path(rendered[0].audio).is_file()


def test_speech_questions_use_the_speakers_sex_and_distractors_in_the_same_language(composer):
    from sam.data.classes import is_speech

    said, mcqs, he = 0, 0, 0
    for spec in composer.make_split("train", 400):
        speech = [e for e in spec["events"] if is_speech(e["label"]) and e.get("transcript")]
        if not speech:
            continue
        language = {e["label"] for e in speech}
        for ex in composer.scene_examples(spec, TASKS):
            if ex.instruction == "What does the speaker say?":
                pronoun = "He" if speech[0]["phrase"].startswith("a man ") else "She"  # it_IT_m_Carlo is a man
                assert ex.answer.startswith(f'{pronoun} says: "'), ex.answer
                said, he = said + 1, he + (pronoun == "He")
            if ex.choices and ex.instruction.startswith("What does the speaker say in the audio?"):
                spoken = {
                    t: lab
                    for lab in language
                    for t in composer.vocabulary("train").transcripts
                    if composer.vocabulary("train").transcript_class[t] == lab
                }
                assert all(c in spoken for c in ex.choices), ex.choices  # no distractor from another language
                mcqs += 1
    assert said >= 3 and mcqs >= 3 and he >= 1
