"""SAM end to end on real recordings: response-only loss, overfitting captions, batched generation,
save/load round trips, LoRA and freezing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sam.config import ConfigError, SAMConfig, preset
from sam.model import SAM
from sam.model.audio import load_audio, waves_to_features
from sam.prompt import IGNORE_INDEX, encode_example, format_prompt
from sam.tokenizer import train_bpe

SAMPLES = Path("/usr/share/sonic-pi/samples")
# Eight real sonic-pi recordings; captions follow their file names.
CLIPS = {
    "ambi_choir": "an ambient choir",
    "bass_hit_c": "a bass hit",
    "drum_cymbal_open": "an open cymbal",
    "elec_blip": "an electronic blip",
    "guit_harmonics": "guitar harmonics",
    "perc_bell": "a bell rings",
    "vinyl_scratch": "a vinyl scratch",
    "drum_heavy_kick": "a heavy kick drum",
}
INSTRUCTION = "Describe the audio."
pytestmark = pytest.mark.skipif(not all((SAMPLES / f"{n}.flac").is_file() for n in CLIPS), reason="sonic-pi-samples not installed")


def _config(layout: str = "concat", lora: int = 4) -> SAMConfig:
    cfg = copy.deepcopy(preset("smoke").model)
    cfg.connector.layout = layout
    cfg.lora.rank = lora
    cfg.lora.dropout = 0.0
    cfg.audio.target_frames, cfg.audio.clip_seconds = 256, 2.56  # the clips are short; keeps the test fast
    return cfg


def _batch(model: SAM, fbank: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded training batch built with the shared prompt template."""
    pairs = [encode_example(model.tokenizer, INSTRUCTION, c) for c in captions]
    width = max(len(ids) for ids, _ in pairs)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in pairs])
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in pairs])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in pairs])
    return dict(fbank=fbank, input_ids=ids, labels=labels, attention_mask=mask)


def _train(model: SAM, params: list[torch.nn.Parameter], batch: dict[str, torch.Tensor], steps: int, weight_decay: float = 0.01) -> None:
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def clips() -> tuple[torch.Tensor, list[str]]:
    audio_cfg = _config().audio
    waves = [load_audio(SAMPLES / f"{name}.flac") for name in CLIPS]
    return waves_to_features(waves, audio_cfg), list(CLIPS.values())


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_bpe([format_prompt(INSTRUCTION)] * 4 + list(CLIPS.values()) + ["&&"], vocab_size=512)


@pytest.fixture(scope="module")
def trained(clips, tokenizer) -> SAM:  # type: ignore[no-untyped-def]
    """A smoke-size SAM trained to caption the eight clips (all parts trainable)."""
    torch.manual_seed(0)
    model = SAM(_config(), tokenizer)
    fbank, captions = clips
    batch = _batch(model, fbank, captions)
    opt = torch.optim.AdamW(model.set_trainable(["encoder", "connector", "lora", "lm"]), lr=6e-3, weight_decay=0.0)
    for step in range(1, 151):
        model.train()
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 and model.eval().generate(fbank, [INSTRUCTION] * len(captions), max_new_tokens=8) == captions:
            break
    return model.eval()


def test_tiny_sam_overfits_real_clip_captions(trained: SAM, clips) -> None:  # type: ignore[no-untyped-def]
    fbank, captions = clips
    assert trained.generate(fbank, [INSTRUCTION] * len(captions), max_new_tokens=12) == captions


def test_batched_generate_equals_per_example(trained: SAM, clips) -> None:  # type: ignore[no-untyped-def]
    fbank, _ = clips
    # Prompts of different lengths force left padding inside the batch.
    prompts = [INSTRUCTION, "Describe the audio in a few words, please.", "What is this?", INSTRUCTION] * 2
    batched = trained.generate(fbank, prompts, max_new_tokens=8)
    single = [trained.generate(fbank[i : i + 1], [p], max_new_tokens=8)[0] for i, p in enumerate(prompts)]
    assert batched == single


def test_save_load_round_trip_reproduces_generation(trained: SAM, clips, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fbank, captions = clips
    trained.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = SAM.from_pretrained(tmp_path).eval()
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.generate(fbank, [INSTRUCTION] * 8, max_new_tokens=12) == trained.generate(fbank, [INSTRUCTION] * 8, max_new_tokens=12)
    # Generation from waveforms and paths goes through the same front end.
    path = SAMPLES / "perc_bell.flac"
    assert loaded.generate([path], [INSTRUCTION], max_new_tokens=12) == [CLIPS["perc_bell"]]


def test_loss_is_cross_entropy_on_response_tokens_only(tokenizer, clips) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    model = SAM(_config(layout="time_major", lora=0), tokenizer).eval()
    fbank, captions = clips
    batch = _batch(model, fbank[:3], captions[:3])
    loss, logits = model(batch)
    n = model.num_audio_tokens()
    assert logits.shape[:2] == (3, n + batch["input_ids"].shape[1])
    assert model.audio_span(batch).tolist() == [[0, n]] * 3
    # Independent: embed [audio][text] by hand, run the LM, score labelled positions only.
    with torch.no_grad():
        sep = model.language_model.get_input_embeddings()(torch.tensor(tokenizer.encode("&&", add_special_tokens=False)))
        audio = model.connector(model.audio_tower(batch["fbank"]), sep)
        seq = torch.cat([audio, model.language_model.get_input_embeddings()(batch["input_ids"])], 1)
        mask = torch.cat([torch.ones(3, n, dtype=torch.long), batch["attention_mask"]], 1)
        ref_logits = model.language_model(inputs_embeds=seq, attention_mask=mask).logits
    terms = [
        F.cross_entropy(ref_logits[b, n + j - 1], batch["input_ids"][b, j], reduction="none")
        for b in range(3)
        for j in range(batch["input_ids"].shape[1])
        if batch["labels"][b, j] != IGNORE_INDEX
    ]
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)
    # Changing a prompt (unlabelled) token's target id does not enter the loss directly.
    assert len(terms) == int((batch["labels"] != IGNORE_INDEX).sum())


def test_lora_trains_only_adapters_when_lm_frozen(tokenizer, clips) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(2)
    model = SAM(_config(lora=4), tokenizer)
    fbank, captions = clips
    batch = _batch(model, fbank[:4], captions[:4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = model.set_trainable(["lora"])
    assert params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    _train(model, params, batch, steps=3)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any(".lora_A." in k for k in changed) and any(".lora_B." in k for k in changed)


def test_set_trainable_freezes_everything_else_bit_identically(tokenizer, clips) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    model = SAM(_config(lora=4), tokenizer)
    fbank, captions = clips
    batch = _batch(model, fbank[:4], captions[:4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, model.set_trainable(["connector", "lora"]), batch, steps=2, weight_decay=0.1)
    after = model.state_dict()
    for k in before:
        trainable = k.startswith("connector.") or ".lora_" in k
        if not trainable:
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["connector.mlp.0.weight"], after["connector.mlp.0.weight"])
    with pytest.raises(ValueError, match="unknown trainable group"):
        model.set_trainable(["decoder"])


def test_merge_lora_keeps_the_function(trained: SAM, clips) -> None:  # type: ignore[no-untyped-def]
    fbank, captions = clips
    model = copy.deepcopy(trained)
    batch = _batch(model, fbank[:2], captions[:2])
    with torch.no_grad():
        _, ref = model(batch)
        model.merge_lora()
        _, merged = model(batch)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(merged, ref, atol=1e-4, rtol=1e-4)


def test_continuation_logprobs_match_the_training_loss_and_rank_the_true_caption_first(trained: SAM, clips) -> None:  # type: ignore[no-untyped-def]
    from sam.data.types import Example
    from sam.eval import choice_likelihoods, score_choice_likelihoods

    fbank, captions = clips
    # Batched (right-padded, responses of different lengths) equals the per-example training loss.
    logp, count = trained.continuation_logprobs(fbank[:3], [INSTRUCTION] * 3, captions[:3])
    for i in range(3):
        with torch.no_grad():
            loss, _ = trained(_batch(trained, fbank[i : i + 1], captions[i : i + 1]))
        n = len(encode_example(trained.tokenizer, INSTRUCTION, captions[i])[0]) - len(encode_example(trained.tokenizer, INSTRUCTION)[0])
        assert int(count[i]) == n
        torch.testing.assert_close(logp[i], -loss * n, atol=1e-4, rtol=1e-4)
    # The model trained to caption the clips finds each clip's own caption the most likely of all eight.
    names = list(CLIPS)
    examples = [Example(n, str(SAMPLES / f"{n}.flac"), INSTRUCTION, CLIPS[n], "reasoning", choices=captions) for n in names]
    table = choice_likelihoods(trained, examples, batch_size=16, audio_loader=lambda ex: load_audio(ex.audio))
    m = score_choice_likelihoods(examples, table)
    assert m["n"] == 8 and m["accuracy"] == 1.0 and m["chance"] == 1 / 8
    with pytest.raises(ValueError, match="2 prompts for 3 continuations"):
        trained.continuation_logprobs(fbank[:2], [INSTRUCTION] * 2, captions[:3])


def test_bad_requests_and_damaged_weights_are_refused_with_a_reason(tokenizer, clips, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fbank, _ = clips
    model = SAM(_config(), tokenizer).eval()
    assert model.generate([], [], max_new_tokens=4) == []
    with pytest.raises(ValueError, match="max_new_tokens: expected a whole number >= 1, got -3"):
        model.generate(fbank[:1], [INSTRUCTION], max_new_tokens=-3)
    with pytest.raises(ValueError, match="prompt 1: empty"):
        model.generate(fbank[:2], [INSTRUCTION, "  "], max_new_tokens=4)
    model.save_pretrained(tmp_path / "ok")
    data = (tmp_path / "ok" / "model.safetensors").read_bytes()
    (tmp_path / "ok" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"model\.safetensors: not a readable safetensors file, truncated or damaged"):
        SAM.from_pretrained(tmp_path / "ok")
    with torch.no_grad():
        next(model.connector.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="audio tokens are NaN or infinite"):
        model.generate(fbank[:1], [INSTRUCTION], max_new_tokens=4)
    model.save_pretrained(tmp_path / "nan")
    with pytest.raises(ConfigError, match=r"weight connector\.\S+ holds NaN or infinite values"):
        SAM.from_pretrained(tmp_path / "nan")
