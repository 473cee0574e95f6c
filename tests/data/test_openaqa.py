"""Training data from LTU/OpenAQA-format instruction JSON (`data.source: openaqa`) on real corpus clips:
deterministic train/valid split by audio file, a test split from its own file, clear errors, and a
short curriculum (BPE from the JSON's text, LM pretraining, stage 0 on cla_label labels, a joint
stage) trained end to end."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from sam.config import ConfigError, StageConfig, config_hash, preset
from sam.data import build_examples, prepare_corpus
from sam.data.build import corpus_texts
from sam.prompt import PROMPT_TEMPLATE, format_prompt
from sam.train.runs import train_or_load

REPO = Path(__file__).resolve().parents[2]
CLIPS = 40


def _items(rows: list[dict], folder: str) -> list[dict]:
    """LTU-style rows (absolute paths of the machine LTU was built on; the files are found by name)."""
    items = []
    for r in rows:
        audio = f"/data/sls/{folder}/{r['id'].replace('/', '_')}.wav"
        items += [
            {
                "instruction": "What is the audio event?",
                "input": "",
                "audio_id": audio,
                "dataset": "corpus",
                "task": "cla_label",
                "output": ", ".join(r["labels"]),
            },
            {
                "instruction": "Write an audio caption describing the sound.",
                "input": "",
                "audio_id": audio,
                "dataset": "corpus",
                "task": "caption",
                "output": r["caption"],
            },
            {
                "instruction": "What could make this sound?",
                "input": "",
                "audio_id": audio,
                "dataset": "corpus",
                "task": "open-ended question",
                "output": f"It sounds like {r['phrase']}.",
            },
        ]
    return items


@pytest.fixture(scope="module")
def openaqa(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A train JSON over CLIPS corpus clips and a test JSON over 8 others; audio linked into one folder."""
    prepare_corpus(REPO / "data", progress=False)
    rows = [json.loads(line) for line in (REPO / "data" / "corpus" / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["labels"] and 0.5 <= r["duration"] <= 10][: CLIPS + 8]
    tmp = tmp_path_factory.mktemp("openaqa")
    audio = tmp / "audio"
    audio.mkdir()
    for r in rows:
        (audio / f"{r['id'].replace('/', '_')}.wav").symlink_to(REPO / "data" / r["path"])
    train, test = _items(rows[:CLIPS], "train"), _items(rows[CLIPS:], "test")
    train.append({"instruction": "What is the audio event?", "audio_id": "/data/sls/gone.wav", "task": "cla_label", "output": "x"})
    (tmp / "train.json").write_text(json.dumps(train))
    (tmp / "test.json").write_text(json.dumps(test))
    exp = preset("smoke")
    exp.data.source, exp.data.json_train, exp.data.audio_dir, exp.data.root = (
        "openaqa",
        str(tmp / "train.json"),
        str(audio),
        str(tmp / "root"),
    )
    exp.data.valid_permille = 200
    return {"exp": exp, "tmp": tmp, "rows": rows, "train": train}


def test_train_and_valid_split_the_json_by_audio_file_deterministically(openaqa, capsys) -> None:
    data = openaqa["exp"].data
    tasks = ["classification", "caption", "open"]
    train, valid = build_examples(data, "train", tasks), build_examples(data, "valid", tasks)
    files = lambda exs: {e.audio for e in exs}  # noqa: E731
    assert files(train).isdisjoint(files(valid)) and len(files(train) | files(valid)) == CLIPS  # the missing file is skipped
    assert 0 < len(files(valid)) < CLIPS // 2  # about 20% of the files
    assert len(train) + len(valid) == 3 * CLIPS and all(Path(e.audio).is_file() for e in train + valid)
    cla = [e for e in train if e.task == "classification"]
    assert cla and all(e.labels and ", ".join(e.labels) == e.answer for e in cla)
    assert {e.task for e in build_examples(data, "train", ["caption"])} == {"caption"}
    # the same split whatever the JSON's order
    shuffled = openaqa["tmp"] / "shuffled.json"
    items = list(openaqa["train"])
    random.Random(0).shuffle(items)
    shuffled.write_text(json.dumps(items))
    other = dataclasses.replace(data, json_train=str(shuffled))
    assert files(build_examples(other, "valid", tasks)) == files(valid)


def test_test_split_comes_from_its_own_file_and_errors_name_the_key(openaqa) -> None:
    data = openaqa["exp"].data
    with pytest.raises(ConfigError, match=r"data\.json_test: not set"):
        build_examples(data, "test", ["caption"])
    with_test = dataclasses.replace(data, json_test=str(openaqa["tmp"] / "test.json"))
    test = build_examples(with_test, "test", ["classification", "caption"])
    assert len(test) == 2 * 8 and not {e.audio for e in test} & {e.audio for e in build_examples(with_test, "train", ["caption"])}
    with pytest.raises(ConfigError, match=r"data\.json_train: .* no usable train examples for tasks \['reasoning'\]"):
        build_examples(data, "train", ["reasoning"])
    missing = dataclasses.replace(data, json_train=str(openaqa["tmp"] / "nope.json"))
    with pytest.raises(Exception, match=r"nope\.json: file does not exist"):
        build_examples(missing, "train", ["caption"])
    bad = dataclasses.replace(data, valid_permille=1001)
    with pytest.raises(ConfigError, match=r"data\.valid_permille"):
        build_examples(bad, "valid", ["caption"])
    # the BPE text: the JSON's prompts and answers, no corpus manifest
    texts = set(corpus_texts(data))
    usable = [i for i in openaqa["train"] if "gone" not in i["audio_id"]]
    assert texts == {PROMPT_TEMPLATE} | {format_prompt(i["instruction"]) for i in usable} | {i["output"] for i in usable}


def test_new_data_settings_leave_existing_run_hashes_alone_and_enter_them_when_set() -> None:
    exp = preset("cpu", "small")
    before = config_hash(exp)
    exp.data.valid_permille = 20  # the default: still left out
    assert config_hash(exp) == before
    exp.data.json_train = "train.json"
    assert config_hash(exp) != before


def test_a_short_curriculum_trains_on_openaqa_json(openaqa, tmp_path) -> None:
    exp = openaqa["exp"]
    exp.model.tokenizer = ""  # a BPE trained on the JSON's text
    exp.data.bpe_vocab_size = 512
    exp.train.eval_batch_size = 4
    exp.train.stages = [
        StageConfig("stage_lm", ["text"], ["lm"], 1e-2, 6, 1, 8),
        StageConfig("stage0", ["classification"], ["encoder", "classifier"], 5e-3, 4, 1, 4),
        StageConfig("stage2", ["classification", "caption", "open"], ["encoder", "connector", "lora"], 3e-3, 4, 1, 4),
    ]
    run = Path(train_or_load(exp, tmp_path / "runs", device="cpu", progress=False))
    info = json.loads((run / "run.json").read_text())
    stages = {s["name"]: s["summary"] for s in info["stages"]}
    assert list(stages) == ["stage_lm", "stage0", "stage2"]
    assert all(torch.isfinite(torch.tensor(s["final_loss"])) for s in stages.values())
    assert stages["stage_lm"]["probe_loss_end"] < stages["stage_lm"]["probe_loss_start"]
    labels = sorted({label for r in openaqa["rows"][:CLIPS] for label in r["labels"]})
    assert set(stages["stage0"]["classes"]) <= set(labels) and len(stages["stage0"]["classes"]) >= 2


def test_sam_train_names_a_missing_instruction_json_in_one_line(tmp_path, capsys) -> None:
    from sam.cli import main

    (tmp_path / "c.yaml").write_text("preset: smoke\n")
    code = main(
        [
            "train",
            "--config",
            str(tmp_path / "c.yaml"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--no-progress",
            "data.source=openaqa",
            f"data.json_train={tmp_path / 'nope.json'}",
            f"data.root={tmp_path / 'root'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"sam train: error: {tmp_path / 'nope.json'}: file does not exist"


def test_sam_data_summary_counts_the_instruction_json_splits(openaqa, tmp_path, capsys) -> None:
    from sam.cli import main

    data = openaqa["exp"].data
    (tmp_path / "c.yaml").write_text(
        f"preset: smoke\ndata:\n  source: openaqa\n  json_train: {data.json_train}\n  audio_dir: {data.audio_dir}\n"
        f"  valid_permille: {data.valid_permille}\n  root: {tmp_path / 'root'}\n"
    )
    assert main(["data-summary", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    train = build_examples(data, "train", ["classification", "caption", "open"])
    assert "test (data.json_test not set)" in out and f"| train   | {len(train):>10} |" in out
