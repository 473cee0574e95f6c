"""Bad input ends `sam` with one line and exit 2, before any work; long jobs report progress in logs;
`sam caption` streams files in batches, reading only what the model uses."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sam.cli import main

REPO = Path(__file__).resolve().parents[2]


def _err(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_unwritable_output_fails_before_any_work(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    # The model folder does not exist either: the output is checked first, so that is not reached.
    code = main(["probe-lm", "--model", str(tmp_path / "no-model"), "--text", "hi", "--out", str(blocker / "out.csv")])
    assert code == 2 and _err(capsys).startswith(f"sam probe-lm: error: --out {blocker / 'out.csv'}: cannot be written")
    code = main(["eval", "--checkpoint", str(tmp_path / "no-model"), "--out", str(blocker / "eval")])
    assert code == 2 and "--out" in _err(capsys)


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.stages.0.lr=nan", "train.stages.0.lr"),
        ("model.connector.layout=diagonal", "model.connector.layout"),
        ("train.weight_decay=inf", "train.weight_decay"),
    ],
)
def test_nonsense_settings_are_refused_before_training(tmp_path: Path, capsys, override: str, key: str) -> None:
    code = main(["train", "--config", str(REPO / "configs" / "smoke.yaml"), "--runs-dir", str(tmp_path), "--no-progress", override])
    assert code == 2 and _err(capsys).startswith(f"sam train: error: {key}:")
    assert not any(tmp_path.iterdir())  # nothing trained, not even the tokenizer


def test_unexpected_errors_are_one_line_with_traceback_only_under_debug(tmp_path: Path, capsys, monkeypatch) -> None:
    import sam.cli

    def boom(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(sam.cli.COMMANDS, "data-summary", boom)
    assert main(["data-summary"]) == 1
    assert _err(capsys) == "sam data-summary: error: ZeroDivisionError: division by zero (run with --debug for the traceback)"
    with pytest.raises(ZeroDivisionError):
        main(["data-summary", "--debug"])


def test_disk_errors_name_the_path(capsys, monkeypatch) -> None:
    import errno

    import sam.cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/metrics.json")

    monkeypatch.setitem(sam.cli.COMMANDS, "data-summary", full)
    assert main(["data-summary"]) == 1
    assert (
        _err(capsys)
        == "sam data-summary: error: /data/out/metrics.json: No space left on device; free space on that disk or write elsewhere"
    )


def test_progress_prints_timed_lines_when_not_a_terminal(tmp_path: Path) -> None:
    from sam.progress import Progress

    out = io.StringIO()
    p = Progress("stage1 (2 of 6 stages)", 4, interval=0.0, stream=out, log=tmp_path / "progress.log")
    for _ in range(4):
        p.update(1)
        p.set_postfix(loss="1.0")
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[stage1 (2 of 6 stages)] 0 of 4 steps, elapsed ")
    assert lines[-1].startswith("[stage1 (2 of 6 stages)] 4 of 4 steps, elapsed ") and "loss=1.0" in lines[-1]
    assert any("ETA" in line for line in lines[1:-1])
    assert len((tmp_path / "progress.log").read_text().splitlines()) == len(lines)
    quiet = io.StringIO()
    p = Progress("x", 1000, interval=3600, stream=quiet)
    for _ in range(999):
        p.update(1)
    assert len(quiet.getvalue().splitlines()) == 1  # the start line; the next comes after the interval or at the end
    p.update(1)
    assert len(quiet.getvalue().splitlines()) == 2


def test_load_audio_prefix_equals_the_start_of_the_full_decode(tmp_path: Path) -> None:
    from sam.data.corpus import read_clip, read_manifest
    from sam.model.audio import load_audio

    if not (REPO / "data" / "corpus" / "manifest.jsonl").is_file():
        pytest.skip("needs the corpus in data/")
    row = max(read_manifest(REPO / "data")[:200], key=lambda r: r["num_samples"])
    wave = read_clip(REPO / "data", row).astype(np.float32)
    from scipy.signal import resample_poly

    sf.write(tmp_path / "c.wav", resample_poly(np.tile(wave, 4), 441, 160).astype(np.float32), 44100, subtype="FLOAT")
    full = load_audio(tmp_path / "c.wav")
    for n in (400, 16000, full.size // 2):
        np.testing.assert_array_equal(load_audio(tmp_path / "c.wav", max_samples=n), full[:n])
    assert load_audio(tmp_path / "c.wav", max_samples=10 * full.size).size == full.size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from sam.config import preset
    from sam.model import SAM
    from sam.prompt import format_prompt
    from sam.tokenizer import train_bpe

    cfg = copy.deepcopy(preset("smoke").model)
    tok = train_bpe([format_prompt("Write a caption for the audio clip.")] * 4 + ["a dog barks", "rain falls"], vocab_size=300)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    SAM(cfg, tok).save_pretrained(path)
    return path


def test_caption_streams_batches_cuts_long_files_and_keeps_one_line_per_file(checkpoint: Path, tmp_path: Path, capsys) -> None:
    from sam.data.corpus import read_clip, read_manifest
    from sam.model import SAM

    if not (REPO / "data" / "corpus" / "manifest.jsonl").is_file():
        pytest.skip("needs the corpus in data/")
    rows = read_manifest(REPO / "data")[:3]
    paths = []
    for i, row in enumerate(rows):
        wave = read_clip(REPO / "data", row).astype(np.float32)
        reps = 1 if i else int(np.ceil(60 * 16000 / wave.size))  # the first file is a minute long
        sf.write(tmp_path / f"{i}.wav", np.tile(wave, reps), 16000, subtype="FLOAT")
        paths.append(str(tmp_path / f"{i}.wav"))
    sf.write(tmp_path / "tiny.wav", np.full(160, 0.1, np.float32), 16000)  # 0.01 s: no fbank frame at all
    argv = [
        "caption",
        "--checkpoint",
        str(checkpoint),
        paths[0],
        str(tmp_path / "tiny.wav"),
        *paths[1:],
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ]
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == paths and all(line.count("\t") == 1 for line in lines)
    assert "tiny.wav: 0.010 s is shorter than one 25 ms fbank window" in captured.err
    model = SAM.from_pretrained(checkpoint).eval()
    from sam.model.audio import load_audio

    whole = [load_audio(p) for p in paths]  # whole files through the model's own front end: the same answers
    import torch

    from sam.model.audio import fbank, normalize, pad_or_trim

    cfg = model.config.audio  # features of the cut wave equal the whole file's features cut to the model's frames
    uncut = normalize(
        pad_or_trim(fbank(whole[0], cfg.sample_rate, cfg.num_mel_bins, cfg.window_type), cfg.target_frames), cfg.norm_mean, cfg.norm_std
    )
    assert torch.equal(model.features([whole[0]])[0], uncut)
    expected = model.generate(whole, ["Write a caption for the audio clip."] * 3, max_new_tokens=4)
    from sam.cli.infer import one_line

    assert [line.split("\t")[1] for line in lines] == [one_line(t) for t in expected]
    assert one_line("two\nlines\r\n\tand a tab") == "two lines and a tab"


def test_ask_refuses_an_empty_question_and_negative_token_budget(checkpoint: Path, tmp_path: Path, capsys) -> None:
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    assert main(["ask", "--checkpoint", str(checkpoint), str(wav), "  "]) == 2
    assert _err(capsys) == "sam ask: error: question: empty; ask a question or give an instruction"
    assert main(["ask", "--checkpoint", str(checkpoint), str(wav), "What is it?", "--max-new-tokens", "-1"]) == 2
    assert "--max-new-tokens: expected >= 1, got -1" in _err(capsys)


def test_checkpoint_without_its_tokenizer_is_a_one_line_error(checkpoint: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy_dir = tmp_path / "model"
    shutil.copytree(checkpoint, copy_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (copy_dir / name).unlink(missing_ok=True)
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    code = main(["ask", "--checkpoint", str(copy_dir), str(wav), "What is it?"])
    err = _err(capsys)
    assert code in (1, 2) and err.startswith("sam ask: error: ") and "tokenizer" in err


def _tiny_text_lm(folder: Path, vocab: int) -> Path:
    import torch

    from sam.model.lm import MambaConfig, MambaLM

    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=32, n_layer=1, d_state=16, headdim=16, chunk_size=16, vocab_size=vocab)).save_pretrained(folder)
    return folder


def test_probe_lm_names_a_tokenizer_larger_than_the_vocabulary_and_a_truncated_bin(checkpoint: Path, tmp_path: Path, capsys) -> None:
    small = _tiny_text_lm(tmp_path / "lm16", 16)
    out = str(tmp_path / "o.csv")
    assert (
        main(["probe-lm", "--model", str(small), "--tokenizer", str(checkpoint), "--text", "a dog barks", "--out", out, "--device", "cpu"])
        == 2
    )
    err = _err(capsys)
    assert "--tokenizer" in err and "but the model embeds only 16" in err
    cut = _tiny_text_lm(tmp_path / "cut", 512)
    blob = (cut / "pytorch_model.bin").read_bytes()
    (cut / "pytorch_model.bin").write_bytes(blob[: len(blob) // 2])
    assert (
        main(["probe-lm", "--model", str(cut), "--tokenizer", str(checkpoint), "--text", "a dog barks", "--out", out, "--device", "cpu"])
        == 2
    )
    assert f"{cut / 'pytorch_model.bin'}: cannot read weights, truncated or damaged" in _err(capsys)
