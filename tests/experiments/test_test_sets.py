"""Test-set sizes of the presets, and that the test split's size touches nothing that trains."""

from __future__ import annotations

import dataclasses

from sam.config import preset
from sam.data import build_examples
from sam.train.runs import stage_keys


def test_presets_have_large_enough_test_sets():
    assert preset("cpu").data.n_test >= 512
    assert preset("gpu").data.n_test >= 2000
    assert preset("smoke").data.n_test <= 32  # the smoke tests stay fast


def test_changing_n_test_leaves_training_and_validation_scenes_and_stage_keys_alone():
    cfg = preset("smoke")
    bigger = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_test=cfg.data.n_test + 7))
    tasks = ["classification", "reasoning"]
    for split in ("train", "valid"):
        assert build_examples(cfg.data, split, tasks) == build_examples(bigger.data, split, tasks)
    small, large = build_examples(cfg.data, "test", tasks), build_examples(bigger.data, "test", tasks)
    assert large[: len(small)] == small and len(large) > len(small)  # scene i depends only on (seed, split, i)
    assert stage_keys(cfg) == stage_keys(bigger)
