"""Dataset + collate: fbank of the rendered scene, response-only labels, right padding, workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from sam.config import preset
from sam.data import build_examples, corpus_texts
from sam.data.corpus import prepare_corpus
from sam.data.dataset import SAMDataset, collate
from sam.data.scenes import render_scene
from sam.model.audio import wave_to_features
from sam.prompt import IGNORE_INDEX, format_prompt
from sam.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def setup():
    prepare_corpus(ROOT, progress=False)
    cfg = preset("smoke")
    cfg.data.root = str(ROOT)
    examples = build_examples(cfg.data, "valid", ["classification", "reasoning"])
    texts = [format_prompt(e.instruction) + e.answer for e in examples]
    return cfg, examples, train_bpe(texts, 300)


def test_items_hold_the_scene_fbank_and_response_only_labels(setup, tmp_path):
    cfg, examples, tok = setup
    ds = SAMDataset(examples[:4], cfg.model.audio, tok, ROOT, cache_dir=tmp_path)
    item = ds[1]
    want = wave_to_features(render_scene(examples[1].audio, ROOT), cfg.model.audio)
    assert item["fbank"].shape == (cfg.model.audio.target_frames, cfg.model.audio.num_mel_bins)
    assert torch.equal(item["fbank"], want)
    n_prompt = len(tok.encode(format_prompt(examples[1].instruction), add_special_tokens=False))
    assert (item["labels"][:n_prompt] == IGNORE_INDEX).all() and (item["labels"][n_prompt:] != IGNORE_INDEX).all()
    assert tok.decode(item["labels"][n_prompt:-1]).strip() == examples[1].answer
    assert item["labels"][-1] == tok.eos_token_id
    assert torch.equal(SAMDataset(examples[:4], cfg.model.audio, tok, ROOT, cache_dir=tmp_path)[1]["fbank"], want)  # from cache
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_collate_pads_right_and_masks_pad_and_prompt(setup):
    cfg, examples, tok = setup
    ds = SAMDataset(examples[:6], cfg.model.audio, tok, ROOT)
    items = [ds[i] for i in range(6)]
    batch = collate(items)
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (6, max(lengths)) and batch["fbank"].dtype == torch.float32
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].sum() == n
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert torch.equal(batch["labels"][i, :n], items[i]["labels"])
    assert batch["examples"][2] is items[2]["example"]


def test_dataloader_with_workers_gives_the_same_batches(setup):
    cfg, examples, tok = setup
    ds = SAMDataset(examples[:8], cfg.model.audio, tok, ROOT)
    plain = [b["fbank"] for b in DataLoader(ds, batch_size=4, collate_fn=collate)]
    workers = [b["fbank"] for b in DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(plain, workers))


def test_corpus_texts_cover_prompts_answers_and_captions(setup):
    cfg, _, _ = setup
    texts = corpus_texts(cfg.data)
    assert any("### Instruction:" in t for t in texts) and "Ship horn" in texts
    assert any(t.startswith("Please check the number") for t in texts)


def test_cache_features_renders_each_distinct_scene_once_reports_bad_ones_and_skips_cached(setup, tmp_path):
    import copy

    import numpy as np

    from sam.data.dataset import audio_key, cache_features

    cfg, examples, _ = setup
    (tmp_path / "corpus").symlink_to(ROOT / "corpus")
    bad = copy.deepcopy(examples[0])
    bad.audio["events"][0]["path"] = "corpus/audio/no/such/clip.wav"
    bad.audio["id"] = "broken-scene"
    scenes = list({ex.audio["id"]: ex for ex in examples}.values())[:3]
    assert len(scenes) == 3
    batch = [*examples[: examples.index(scenes[-1]) + 1], bad]  # several questions per scene: one render each
    out = cache_features(batch, cfg.model.audio, tmp_path, workers=2, progress=False)
    assert (out["distinct"], out["cached_before"], out["written"], out["failed"]) == (4, 0, 3, 1)
    assert "broken-scene" in out["errors"][0]
    for ex in scenes:
        got = np.load(tmp_path / "features" / f"{audio_key(ex, cfg.model.audio)}.npy")
        assert np.array_equal(got, wave_to_features(render_scene(ex.audio, ROOT), cfg.model.audio).numpy())
    again = cache_features(scenes, cfg.model.audio, tmp_path, workers=2, progress=False)
    assert (again["cached_before"], again["written"]) == (3, 0)
