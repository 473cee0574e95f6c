"""SpecAugment in encoder pretraining: what it masks, when it applies, and which run names it changes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sam.config import ConfigError, config_hash, preset, to_dict
from sam.config.identity import hash_tree, stage_keys
from sam.train.heads import EncoderClassifier, spec_mask


def _bands(kept: torch.Tensor) -> list[tuple[int, int]]:
    """(start, width) of the one run of False in a 1-D bool tensor ((0, 0) when none)."""
    idx = torch.nonzero(~kept).flatten()
    if not len(idx):
        return [(0, 0)]
    assert int(idx[-1] - idx[0]) + 1 == len(idx), "the mask is not one contiguous band"
    return [(int(idx[0]), len(idx))]


def test_spec_mask_zeroes_one_band_and_one_span_per_clip_within_the_widths() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 100, 40) + 1.0  # no zeros of its own
    y = spec_mask(x, freq=8, time=20)
    widths_f, widths_t = set(), set()
    for clip in range(len(x)):
        zero = y[clip] == 0
        cols = zero.all(dim=0)  # masked mel bins: zero in every frame
        rows = zero.all(dim=1)  # masked frames: zero in every bin
        (_, wf), (_, wt) = _bands(~cols)[0], _bands(~rows)[0]
        assert wf <= 8 and wt <= 20
        widths_f.add(wf)
        widths_t.add(wt)
        outside = ~(cols[None, :] | rows[:, None])
        assert torch.equal(y[clip][outside], x[clip][outside]), "values outside the masks changed"
        assert bool(zero[outside].any()) is False
    assert len(widths_f) > 3 and len(widths_t) > 3, "widths are not drawn per clip"
    assert torch.equal(spec_mask(x, 0, 0), x)
    with pytest.raises(ValueError, match="expected fbank"):
        spec_mask(x[0], 8, 20)


def test_encoder_classifier_masks_in_training_only_and_rejects_negative_widths() -> None:
    tower = torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.Unflatten(1, (100, 1)))
    clf = EncoderClassifier(tower, 8, ["a", "b"], freq_mask=10, time_mask=30)
    seen: list[torch.Tensor] = []
    tower.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    batch = {"fbank": torch.rand(4, 100, 40) + 1.0, "examples": []}
    clf.targets = lambda _ex: torch.zeros(4, 2)  # type: ignore[method-assign]
    clf.eval()
    clf(batch)
    assert torch.equal(seen[-1], batch["fbank"])
    clf.train()
    torch.manual_seed(1)
    clf(batch)
    assert bool((seen[-1] == 0).any()) and not torch.equal(seen[-1], batch["fbank"])
    with pytest.raises(ConfigError, match="pretrain_freq_mask"):
        EncoderClassifier(tower, 8, ["a"], freq_mask=-1)


def test_masks_rename_the_encoder_stage_and_later_ones_but_not_lm_pretraining_or_default_runs() -> None:
    cfg = preset("smoke")
    masked = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, encoder=dataclasses.replace(cfg.model.encoder, pretrain_time_mask=48))
    )
    assert "pretrain_time_mask" in to_dict(cfg)["model"]["encoder"]
    assert not {"pretrain_freq_mask", "pretrain_time_mask"} & set(hash_tree(cfg)["model"]["encoder"]), "default runs were renamed"
    assert hash_tree(masked)["model"]["encoder"]["pretrain_time_mask"] == 48
    assert config_hash(cfg) != config_hash(masked)
    names = [s.name for s in cfg.train.stages]
    before, after = stage_keys(cfg), stage_keys(masked)
    lm, enc = names.index("stage_lm"), names.index("stage0")
    assert before[lm] == after[lm]
    assert all(before[i] != after[i] for i in range(len(names)) if i != lm and i >= enc)
