"""The `sam` command: help for every subcommand, one-line config errors, and the commands on a
smoke-sized trained run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sam.cli import COMMANDS, EXIT_CONFIG, build_parser, main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_explains_its_arguments(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    assert sub.description and sub.description.split()[0] in out
    for action in sub._actions:
        if action.help and action.help != "==SUPPRESS==" and action.dest != "help":
            assert action.help.split()[0] in out, f"{command} --help does not explain {action.dest}"


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_unknown_config_key_in_yaml_is_a_one_line_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: smoke\ntrain:\n  learning_rate: 0.1\n")
    assert "train.learning_rate" in _one_line_error(capsys, ["train", "--config", str(bad)])


def test_bad_override_value_and_unknown_override_key_name_the_key(capsys: pytest.CaptureFixture) -> None:
    cfg = str(REPO / "configs" / "smoke.yaml")
    assert "train.stages.1.lr" in _one_line_error(capsys, ["train", "--config", cfg, "train.stages.1.lr=fast"])
    assert "model.lora.rnak" in _one_line_error(capsys, ["train", "--config", cfg, "model.lora.rnak=4"])
    assert "train.stages.1.trainable" in _one_line_error(capsys, ["train", "--config", cfg, "train.stages.1.trainable=[decoder]"])


def test_missing_config_file_and_unknown_preset_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "does not exist" in _one_line_error(capsys, ["train", "--config", str(tmp_path / "nope.yaml")])
    preset_file = tmp_path / "p.yaml"
    preset_file.write_text("preset: laptop\n")
    assert "laptop" in _one_line_error(capsys, ["train", "--config", str(preset_file)])


def test_config_error_exits_2_without_traceback_as_a_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: smoke\nmodel:\n  lm:\n    d_model: wide\n")
    proc = subprocess.run([sys.executable, "-m", "sam.cli", "train", "--config", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.strip().count("\n") == 0 and "model.lm.d_model" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# The commands on a smoke-sized trained run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sam.data.corpus import prepare_corpus

    prepare_corpus(REPO / "data", progress=False)
    runs = tmp_path_factory.mktemp("runs")
    overrides = [f"data.root={REPO / 'data'}", "data.n_valid=4", "data.n_test=4", "train.eval_batch_size=4", "train.max_new_tokens=4"]
    # Two short stages (encoder pretraining, then connector) keep this fast; the full curriculum is tested in test_train.
    overrides += [
        "train.stages=[{name: stage0, tasks: [classification], trainable: [encoder, classifier], steps: 2, warmup_steps: 1, batch_size: 2},"
        " {name: stage1, tasks: [classification], trainable: [connector], steps: 2, warmup_steps: 1, batch_size: 2}]"
    ]
    assert (
        main(
            [
                "train",
                "--config",
                str(REPO / "configs" / "smoke.yaml"),
                "--runs-dir",
                str(runs),
                "--device",
                "cpu",
                "--no-progress",
                *overrides,
            ]
        )
        == 0
    )
    (run_dir,) = [p for p in runs.iterdir() if (p / "model").is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np
    import soundfile as sf

    from sam.data.corpus import read_clip, read_manifest

    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    sf.write(path, read_clip(REPO / "data", read_manifest(REPO / "data")[0]).astype(np.float32), 16000)
    return path


def test_train_writes_a_run_with_model_config_and_logs(trained_run: Path) -> None:
    assert (trained_run / "model" / "config.json").is_file() and (trained_run / "config.yaml").is_file()
    assert (trained_run / "log.csv").read_text().startswith("stage,step,loss")


def test_eval_scores_a_run_and_writes_metrics_and_predictions(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    out = trained_run.parent / "eval"
    assert (
        main(
            ["eval", "--run", str(trained_run), "--tasks", "classification", "closed", "--limit", "6", "--out", str(out), "--device", "cpu"]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert "classification" in metrics
    assert len((out / "predictions.csv").read_text().splitlines()) >= 2


def test_caption_and_ask_answer_with_text_and_report_bad_files(
    trained_run: Path, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt ")
    assert main(["caption", "--run", str(trained_run), str(wav), str(broken), "--max-new-tokens", "3", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{wav}\t") and "broken.wav" in captured.err
    assert (
        main(["ask", "--checkpoint", str(trained_run / "model"), str(wav), "What do you hear?", "--max-new-tokens", "3", "--device", "cpu"])
        == 0
    )
    assert capsys.readouterr().out.count("\n") == 1  # one answer line (its text is noise from an untrained LM)


def test_probe_writes_rank_similarity_and_state_update_rows(trained_run: Path, wav: Path, tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "probe.csv"
    assert (
        main(
            [
                "probe",
                "--run",
                str(trained_run),
                "--audio",
                str(wav),
                str(wav),
                "--sites",
                "connector.out",
                "lm.layers.*",
                "--state",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert {"connector.out", "lm.layers.0", "lm.layers.1"} <= set(table["site"])
    assert {"tau_rank", "similarity", "state_update_distance", "state_update_relative"} <= set(table["measure"])
    assert set(table["audio"]) == {str(wav)} and table["value"].notna().all()


def test_probe_unknown_site_is_a_one_line_error(trained_run: Path, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(
        capsys,
        [
            "probe",
            "--run",
            str(trained_run),
            "--audio",
            str(wav),
            "--sites",
            "decoder.*",
            "--out",
            str(tmp_path / "x.csv"),
            "--device",
            "cpu",
        ],
    )
    assert "decoder.*" in err


def test_data_summary_counts_examples_per_split_and_task(capsys: pytest.CaptureFixture) -> None:
    assert main(["data-summary", "--preset", "smoke", f"data.root={REPO / 'data'}"]) == 0
    out = capsys.readouterr().out
    assert "clips" in out and "| split" in out and "classification" in out


@pytest.fixture(scope="module")
def text_lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random LMs saved the way they are published: transformers' Mamba2 and GPT-2 folders
    (with a BPE tokenizer trained here by `tokenizers`) and a state-spaces/mamba2 folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, Mamba2Config, Mamba2ForCausalLM, PreTrainedTokenizerFast

    from sam.model.lm import MambaConfig, MambaLM

    root = tmp_path_factory.mktemp("text_lms")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(
        ["a dog barks twice while rain falls on a tin roof", "the engine starts and a bell rings"] * 20,
        trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"]),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")
    torch.manual_seed(0)
    folders = {"mamba2": root / "mamba2", "gpt2": root / "gpt2", "state-spaces": root / "state-spaces"}
    Mamba2ForCausalLM(
        Mamba2Config(
            vocab_size=128,
            hidden_size=64,
            num_hidden_layers=2,
            state_size=16,
            head_dim=16,
            num_heads=8,
            n_groups=1,
            expand=2,
            chunk_size=16,
        )
    ).save_pretrained(folders["mamba2"])
    GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(folders["gpt2"])
    MambaLM(MambaConfig(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=16, vocab_size=128)).save_pretrained(
        folders["state-spaces"]
    )
    for name in ("mamba2", "gpt2"):
        tokenizer.save_pretrained(folders[name])
    return folders


TEXTS = ["a dog barks twice while rain falls on a tin roof", "the engine starts and a bell rings twice"]


def test_probe_lm_measures_layers_and_state_updates_of_a_hugging_face_mamba2(text_lms: dict[str, Path], tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "mamba2.csv"
    assert (
        main(
            [
                "probe-lm",
                "--model",
                str(text_lms["mamba2"]),
                "--text",
                *TEXTS,
                "--span",
                "1:6",
                "--state",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert set(table["text"]) == {0, 1}
    assert {"lm.layers.0", "lm.layers.1", "lm.layers.0.mixer", "lm.layers.1.mixer"} == set(table["site"])  # mixers only from --state
    assert {"tau_rank", "similarity", "state_update_distance", "state_update_relative"} <= set(table["measure"])
    assert (table.loc[table.measure == "tau_rank", "tokens"] == 5).all() and table["value"].notna().all()


def test_probe_lm_reads_module_paths_of_a_transformer_and_a_state_spaces_folder(
    text_lms: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import pandas as pd

    out = tmp_path / "gpt2.csv"
    assert (
        main(
            [
                "probe-lm",
                "--model",
                str(text_lms["gpt2"]),
                "--text",
                TEXTS[0],
                "--sites",
                "transformer.h.*",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert set(pd.read_csv(out)["site"]) == {"transformer.h.0", "transformer.h.1"}  # * is one name part: no .attn, .mlp
    assert "no Mamba backbone" in _one_line_error(
        capsys,
        ["probe-lm", "--model", str(text_lms["gpt2"]), "--text", TEXTS[0], "--state", "--sites", "transformer.h.0", "--out", str(out)],
    )
    out = tmp_path / "ss.csv"
    assert (
        main(
            [
                "probe-lm",
                "--model",
                str(text_lms["state-spaces"]),
                "--tokenizer",
                str(text_lms["gpt2"]),
                "--text",
                TEXTS[1],
                "--state",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert {"lm.layers.0", "lm.layers.1.mixer"} <= set(pd.read_csv(out)["site"])
    assert "--tokenizer" in _one_line_error(
        capsys, ["probe-lm", "--model", str(text_lms["state-spaces"]), "--text", "x", "--out", str(out)]
    )
    assert "--span" in _one_line_error(
        capsys, ["probe-lm", "--model", str(text_lms["gpt2"]), "--text", "x", "--span", "5", "--out", str(out)]
    )


def test_probe_lm_reports_texts_it_cannot_measure_and_keeps_the_others(
    text_lms: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import pandas as pd

    texts, out = tmp_path / "texts.txt", tmp_path / "some.csv"
    texts.write_text(f"{TEXTS[0]}\nbell\n{TEXTS[1]}\n", encoding="utf-8")
    assert (
        main(
            [
                "probe-lm",
                "--model",
                str(text_lms["gpt2"]),
                "--text-file",
                str(texts),
                "--sites",
                "transformer.h.1",
                "--span",
                "0:4",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    assert "text 1:" in capsys.readouterr().err
    assert set(pd.read_csv(out)["text"]) == {0, 2}
