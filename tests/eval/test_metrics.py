"""Metric functions agree with the libraries and rules they stand for (scikit-learn, pycocoevalcap, MMAU)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from sam.eval.metrics import (
    caption_metrics,
    classification_metrics,
    corenlp_status,
    exact_match_metrics,
    mean_average_precision,
    mmau_named_choice,
    mmau_string_match,
    normalized_answer_match,
    parse_labels,
    top_k_predictions,
)

# ------------------------------------------------------------------------------------------
# Classification


def test_map_equals_sklearn_macro_over_classes_with_positives():
    y = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]])
    s = np.array([[0.9, 0.1, 0.3, 0.2], [0.2, 0.8, 0.5, 0.6], [0.4, 0.3, 0.2, 0.1], [0.5, 0.4, 0.9, 0.7], [0.1, 0.6, 0.2, 0.3]])
    mAP, per_class = mean_average_precision(y, s)
    keep = [0, 1, 3]  # class 2 has no positive
    assert mAP == pytest.approx(average_precision_score(y[:, keep], s[:, keep], average="macro"))
    assert np.isnan(per_class[2])
    np.testing.assert_allclose(per_class[keep], average_precision_score(y[:, keep], s[:, keep], average=None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = average_precision_score(y, s, average="macro")
    assert naive != pytest.approx(mAP)  # including the empty class would change the number


def test_map_of_a_perfect_ranking_is_one_and_of_a_reversed_ranking_is_lower():
    y = np.eye(4, dtype=int)
    assert mean_average_precision(y, np.eye(4) + 0.1)[0] == pytest.approx(1.0)
    assert mean_average_precision(y, 1 - np.eye(4))[0] < 0.5


def test_accuracy_counts_top1_inside_label_set_and_micro_f1_uses_top1_rule():
    y = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]])
    s = np.array([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.3, 0.3, 0.2]])  # last row: tie -> class 0
    m = classification_metrics(y, s)
    assert m["accuracy"] == pytest.approx(3 / 4)
    pred = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0]])
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    m2 = classification_metrics(y, s, top_k=2)
    assert m2["micro_f1"] == pytest.approx(f1_score(y, top_k_predictions(s, 2), average="micro"))
    assert m["chance"]["accuracy_uniform"] == pytest.approx(np.mean([1, 2, 1, 1]) / 3)
    assert m["chance"]["accuracy_majority"] == pytest.approx(2 / 4)


def test_chance_levels_match_random_scores():
    rng = np.random.default_rng(0)
    y = (rng.random((4000, 6)) < np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5])).astype(int)
    m = classification_metrics(y, rng.random(y.shape))
    assert m["mAP"] == pytest.approx(m["chance"]["mAP"], abs=0.015)
    assert m["micro_f1"] == pytest.approx(m["chance"]["micro_f1_uniform"], abs=0.015)
    assert m["accuracy"] == pytest.approx(m["chance"]["accuracy_uniform"], abs=0.02)
    # the baseline lines are the majority rules, which random guessing does not reach
    assert m["chance"]["micro_f1"] > m["micro_f1"] and m["chance"]["accuracy"] > m["accuracy"]


def test_classification_metrics_reject_bad_shapes_and_non_finite_scores():
    with pytest.raises(ValueError, match="one shape"):
        classification_metrics(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.eye(2), np.array([[np.nan, 0], [0, 1]]))


def test_parse_labels_reads_exact_class_names_and_reports_the_rest():
    classes = ["Dog", "engine", "rain", "rock and roll", "glass_breaking"]
    assert parse_labels("Dog, engine and rain.", classes) == (["Dog", "engine", "rain"], [])
    assert parse_labels("rock and roll; glass breaking", classes) == (["rock and roll", "glass_breaking"], [])
    assert parse_labels("a dog barks, engine", classes) == (["engine"], ["a dog barks"])
    assert parse_labels("", classes) == ([], [])


def test_exact_match_metrics_equal_sklearn():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0]])
    p = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    m = exact_match_metrics(y, p)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    assert m["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"))
    assert m["micro_precision"] == pytest.approx(precision_score(y, p, average="micro"))
    assert m["micro_recall"] == pytest.approx(recall_score(y, p, average="micro"))
    assert m["empty_predictions"] == 1


# ------------------------------------------------------------------------------------------
# MMAU string match. Expected values are worked out by hand from the rule in MMAU's
# evaluation.py: answer words all present, no word of a wrong choice that the answer lacks.

GENDER = ["Man", "Woman", "Child", "Robot"]
# Real test-mini items (Sakshi113/MMAU, Apache-2.0).
A_WOMAN = ["A child", "A woman", "An adult man", "A teenager"]
WOMAN_CHILD = ["Woman and child", "Two men", "Two women", "A man and a child"]
DOORS = ["Car door", "House door", "Cabinet door", "Elevator door"]
SPEECH = ["Female speech", "Male speech", "Trickle", "Mechanisms"]
PRESENT = ["Yes, it is the second sound.", "Yes, it is the third sound.", "No, it is not present.", "Yes, it is the last sound."]
ORDERS = [
    "['light_switch_clicking', 'boiling_water', 'doorbell_ringing', 'clock_ticking']",
    "['boiling_water', 'light_switch_clicking', 'clock_ticking', 'doorbell_ringing']",
    "['clock_ticking', 'doorbell_ringing', 'boiling_water', 'light_switch_clicking']",
]


@pytest.mark.parametrize(
    "prediction, answer, choices, expected",
    [
        ("The speaker is a man.", "Man", GENDER, True),
        ("woman", "Man", GENDER, False),  # the answer is a substring of a distractor, not a word of it
        ("man", "Woman", GENDER, False),
        ("(B) MAN!!!", "man", GENDER, True),  # case and punctuation never matter
        ("", "Man", GENDER, False),
        ("...", "Man", GENDER, False),  # no word at all
        ("a man or a woman", "Man", GENDER, False),
        ("A woman.", "A woman", A_WOMAN, True),
        ("woman", "A woman", A_WOMAN, False),  # partial: the answer's word "a" is missing
        ("a woman, not a man", "A woman", A_WOMAN, False),
        ("woman and child", "Woman and child", WOMAN_CHILD, True),
        ("A woman and a child", "Woman and child", WOMAN_CHILD, False),  # "a" belongs only to a wrong choice
        ("the house door", "House door", DOORS, True),  # "door" is shared, so it is not a wrong word
        ("door", "House door", DOORS, False),
        ("house door, not the car door", "House door", DOORS, False),
        ("female speech", "Female speech", SPEECH, True),  # "male" is not a word of "female"
        ("male speech", "Female speech", SPEECH, False),
        ("No", "No, it is not present.", PRESENT, False),
        ("No, it is not present in this clip", "No, it is not present.", PRESENT, True),
        ("No, it is not present in the clip", "No, it is not present.", PRESENT, False),  # "the" is a wrong word
        ("Yes, it is the second sound.", "No, it is not present.", PRESENT, False),
        # choices with the answer's words in another order add no wrong words: any order matches
        (ORDERS[1], ORDERS[0], ORDERS, True),
        ("light_switch_clicking boiling_water", ORDERS[0], ORDERS, False),
        ("car_horn", "car horn", ["car horn", "dog", "rain", "wind"], False),  # "_" is a word character
        ("There are 3 dogs", "3", ["1", "2", "3", "4"], True),
        ("3 or 4", "3", ["1", "2", "3", "4"], False),
        ("hip hop", "Hip-hop", ["Hip-hop", "Pop", "Rock", "Jazz"], True),
        ("pop", "Hip-hop", ["Hip-hop", "Pop", "Rock", "Jazz"], False),
        ("yes", "Yes", ["Yes", "No", "yes."], True),  # a duplicate of the answer is not a wrong choice
    ],
)
def test_mmau_string_match_follows_the_official_rule(prediction, answer, choices, expected):
    assert mmau_string_match(prediction, answer, choices) is expected


def test_mmau_exactly_one_choice_matches_when_choices_have_distinct_words():
    for choices in (GENDER, A_WOMAN, WOMAN_CHILD, DOORS, SPEECH, PRESENT):
        for answer in choices:
            assert [mmau_string_match(c, answer, choices) for c in choices] == [c == answer for c in choices]


def test_mmau_named_choice_is_the_one_choice_an_answer_picks():
    choices = ["Dog", "Cat", "Car horn", "Rain"]
    assert mmau_named_choice("I hear a dog", choices) == "Dog"
    assert mmau_named_choice("dog and cat", choices) is None  # picks two: no valid choice
    assert mmau_named_choice("thunder", choices) is None and mmau_named_choice("", choices) is None
    assert mmau_named_choice("yes", ["Yes", "No", "yes."]) == "Yes"  # equal word sets are one choice
    for answer in choices:
        assert mmau_named_choice(answer, choices) == answer


def test_normalized_answer_match_ignores_case_and_punctuation_only():
    assert normalized_answer_match("Yes.", "yes")
    assert normalized_answer_match("  the DOG, then rain ", "the dog then rain")
    assert not normalized_answer_match("rain then the dog", "the dog then rain")
    assert not normalized_answer_match("yes", "no")


# ------------------------------------------------------------------------------------------
# Captioning

PREDS = ["a dog is barking loudly", "rain falls on a metal roof.", "An engine idles, then a car horn honks", ""]
REFS = [
    ["A dog barks loudly.", "A dog is barking repeatedly", "Loud barking from a dog."],
    ["Rain is falling on a roof", "Heavy rain hits a tin roof."],
    ["A car engine idles and a horn honks", "An engine runs while a horn is sounded"],
    ["Birds chirp in the distance"],
]


def test_caption_metrics_equal_a_direct_pycocoevalcap_call():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ours, per_clip = caption_metrics(PREDS, REFS)

    tok = PTBTokenizer()
    gts = tok.tokenize({f"clip{i}": [{"caption": r} for r in refs] for i, refs in enumerate(REFS)})
    res = tok.tokenize({f"clip{i}": [{"caption": p}] for i, p in enumerate(PREDS)})
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        assert ours[f"BLEU_{k + 1}"] == pytest.approx(bleu[k], abs=1e-12)
        np.testing.assert_allclose(per_clip[f"BLEU_{k + 1}"], bleu_each[k], atol=1e-12)
    for name, scorer in (("METEOR", Meteor()), ("ROUGE_L", Rouge()), ("CIDEr-D", Cider())):
        score, each = scorer.compute_score(gts, res)
        assert ours[name] == pytest.approx(score, abs=1e-12), name
        np.testing.assert_allclose(per_clip[name], each, atol=1e-12)
    assert ours["CIDEr-D"] > 0 and per_clip["CIDEr-D"].iloc[3] == 0  # the empty prediction scores 0


def test_spice_is_not_computed_without_a_corenlp_jar(tmp_path: Path):
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    before = sorted(p.name for p in lib.iterdir())
    for where in (None, tmp_path):
        ours, per_clip = caption_metrics(PREDS[:1], REFS[:1], corenlp_dir=where)
        for key in ("SPICE", "SPIDEr"):
            assert isinstance(ours[key], str) and ours[key].startswith("not computed: ")
            assert "stanford-corenlp-3.6.0" in ours[key]
        assert "SPICE" not in per_clip.columns
    assert str(tmp_path) in corenlp_status(tmp_path)[1]
    assert sorted(p.name for p in lib.iterdir()) == before  # nothing was downloaded


def test_spice_failure_is_reported_as_not_computed_with_the_java_error(tmp_path: Path):
    for jar in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / jar).write_bytes(b"")  # present but empty: SPICE starts, CoreNLP classes are missing
    ours, _ = caption_metrics(PREDS[:1], REFS[:1], corenlp_dir=tmp_path)
    assert ours["SPICE"].startswith("not computed: SPICE jar failed") and "\n" not in ours["SPICE"]
    assert "ClassNotFoundException" in ours["SPICE"] and ours["SPIDEr"] == ours["SPICE"]


def test_caption_metrics_name_the_bad_item():
    with pytest.raises(ValueError, match="item 1"):
        caption_metrics(["a", "b"], [["a dog"], []])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        caption_metrics(["a", "b"], [["a dog"]])
