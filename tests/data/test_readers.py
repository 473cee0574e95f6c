"""Readers parse real-format fixtures; bad rows are skipped and reported with their row numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sam.data.readers import (
    DatasetError,
    read_audiocaps,
    read_audioset,
    read_clotho,
    read_esc50,
    read_mmau,
    read_openaqa,
    write_mmau_json,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(8000) / 5.0), 16000)


def test_openaqa_reader_maps_ltu_tasks_and_reports_bad_rows(tmp_path):
    _wav(tmp_path / "clipA.flac")
    _wav(tmp_path / "clipB.flac")
    ex, rep = read_openaqa(FIX / "openaqa" / "openaqa_sample.json", audio_dir=tmp_path)
    assert [e.task for e in ex] == ["classification", "open", "caption"]
    assert ex[0].answer == "Dog, Bark" and ex[0].audio == str(tmp_path / "clipA.flac") and ex[0].labels == ["Dog", "Bark"]
    assert ex[1].labels == [] and ex[2].labels == []
    assert rep.rows == 5 and rep.kept == 3
    assert [r for r, _ in rep.bad] == [3, 4]
    assert "output" in rep.bad[0][1] and "missing" in rep.bad[1][1]
    assert rep.missing_audio[0][0] == 4


def test_audioset_reader_skips_unknown_labels_bad_numbers_and_missing_audio(tmp_path):
    for name in ("--4gqARaEJE.wav", "Y--BfvyPmVMo.wav", "--U7joUcTCo.wav", "--i-y1v8Hy8.wav"):
        _wav(tmp_path / name)
    ex, rep = read_audioset(FIX / "audioset" / "eval_segments.csv", FIX / "audioset" / "class_labels_indices.csv", tmp_path)
    assert [e.labels for e in ex] == [["Dog", "Bark"], ["Speech"]]
    assert ex[1].audio.endswith("Y--BfvyPmVMo.wav")
    bad = dict(rep.bad)
    assert set(bad) == {6, 7, 8}  # physical CSV lines (3 comment lines first)
    assert "unknown label" in bad[6] and "/m/0xxxxx" in bad[6]
    assert "not numbers" in bad[7]
    assert "audio file missing" in bad[8]


def test_audiocaps_reader(tmp_path):
    for name in ("103549.wav", "6BJ455B1aAs.wav", "GOD8Bt5LfDQ.wav"):
        _wav(tmp_path / name)
    ex, rep = read_audiocaps(FIX / "audiocaps" / "test.csv", tmp_path)
    assert [e.id for e in ex] == ["audiocaps-103549", "audiocaps-103548"]
    assert ex[1].answer.startswith("A rocket flies by") and ex[1].task == "caption"
    assert dict(rep.bad).keys() == {4, 5}
    assert "caption" in dict(rep.bad)[4] and "missing" in dict(rep.bad)[5]


def test_clotho_reader_gives_five_references_per_clip(tmp_path):
    for name in ("Santa Motor.wav", "Radio bad reception.wav"):
        _wav(tmp_path / name)
    ex, rep = read_clotho(FIX / "clotho" / "clotho_captions_evaluation.csv", tmp_path, FIX / "clotho" / "clotho_metadata_evaluation.csv")
    assert len(ex) == 5 and all(len(e.metadata["references"]) == 5 for e in ex)
    assert ex[0].metadata["keywords"] == "machine;whine;squeal;rhythm"
    assert dict(rep.bad).keys() == {3, 4}
    assert "caption_5" in dict(rep.bad)[3] and "gym 2.wav" in dict(rep.bad)[4]


def test_esc50_reader_rejects_inconsistent_labels(tmp_path):
    for name in ("1-100032-A-0.wav", "1-100038-A-14.wav", "1-101296-A-19.wav", "1-101336-A-30.wav", "1-101404-A-34.wav"):
        _wav(tmp_path / name)
    ex, rep = read_esc50(FIX / "esc50" / "esc50.csv", tmp_path)
    assert [e.answer for e in ex] == ["dog", "chirping birds", "can opening"]
    bad = dict(rep.bad)
    assert set(bad) == {4, 5, 6}
    assert "missing" in bad[4] and "unknown label" in bad[5] and "0..49" in bad[6]


def test_mmau_reader_reads_the_real_test_mini_file():
    ex, rep = read_mmau(FIX / "mmau" / "mmau-test-mini.json", check_audio=False)
    assert rep.rows == 1000 and len(ex) == 1000 and not rep.bad
    assert all(e.answer in e.choices for e in ex)
    assert sum(e.metadata["task"] == "sound" for e in ex) == 333
    assert all(isinstance(e.metadata["category"], str) for e in ex)  # list-valued categories flattened
    sound, _ = read_mmau(FIX / "mmau" / "mmau-test-mini.json", check_audio=False, task="sound")
    assert len(sound) == 333 and "(A)" in sound[0].instruction
    _, rep = read_mmau(FIX / "mmau" / "mmau-test-mini.json")  # no audio shipped: every row reported missing
    assert rep.kept == 0 and len(rep.missing_audio) == 1000


def test_missing_dataset_file_raises_naming_it(tmp_path):
    with pytest.raises(DatasetError, match="nope.csv"):
        read_esc50(tmp_path / "nope.csv", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_mmau(tmp_path / "bad.json")


def test_write_mmau_json_round_trips_file_audio(tmp_path):
    ex, _ = read_mmau(FIX / "mmau" / "mmau-test-mini.json", check_audio=False)
    n = write_mmau_json(ex[:20], tmp_path / "out.json")
    back, rep = read_mmau(tmp_path / "out.json", check_audio=False)
    assert n == 20 and rep.kept == 20
    assert [(e.id, e.answer, e.choices) for e in back] == [(e.id, e.answer, e.choices) for e in ex[:20]]


def _fields(examples):
    return [(e.id, str(e.audio), e.instruction, e.answer, e.task, e.labels, e.choices, e.metadata.get("references")) for e in examples]


def test_sam_convert_writes_instruction_json_that_reads_back_as_the_same_examples(tmp_path, capsys):
    """Every reader's examples -> `sam convert` -> `read_openaqa`: the same audio, text, task, labels,
    choices and reference captions, so any of these datasets can be data.json_train / json_test."""
    from sam.cli import main

    audio = tmp_path / "audio"
    for name in (
        "--4gqARaEJE.wav",
        "Y--BfvyPmVMo.wav",
        "103549.wav",
        "6BJ455B1aAs.wav",
        "Santa Motor.wav",
        "Radio bad reception.wav",
        "1-100032-A-0.wav",
        "1-101296-A-19.wav",
        "1-101336-A-30.wav",
    ):
        _wav(audio / name)
    mmau = tmp_path / "mmau.json"
    items = json.loads((FIX / "mmau" / "mmau-test-mini.json").read_text())[:6]
    for item in items:
        _wav(tmp_path / item["audio_id"].removeprefix("./"))
    mmau.write_text(json.dumps(items))
    cases = {
        "audioset": (
            [
                str(FIX / "audioset" / "eval_segments.csv"),
                "--labels",
                str(FIX / "audioset" / "class_labels_indices.csv"),
                "--audio-dir",
                str(audio),
            ],
            read_audioset(FIX / "audioset" / "eval_segments.csv", FIX / "audioset" / "class_labels_indices.csv", audio)[0],
        ),
        "audiocaps": (
            [str(FIX / "audiocaps" / "test.csv"), "--audio-dir", str(audio)],
            read_audiocaps(FIX / "audiocaps" / "test.csv", audio)[0],
        ),
        "clotho": (
            [str(FIX / "clotho" / "clotho_captions_evaluation.csv"), "--audio-dir", str(audio)],
            read_clotho(FIX / "clotho" / "clotho_captions_evaluation.csv", audio)[0],
        ),
        "esc50": ([str(FIX / "esc50" / "esc50.csv"), "--audio-dir", str(audio)], read_esc50(FIX / "esc50" / "esc50.csv", audio)[0]),
        "mmau": ([str(mmau)], read_mmau(mmau)[0]),
    }
    for fmt, (args, expected) in cases.items():
        out = tmp_path / f"{fmt}.json"
        assert main(["convert", fmt, *args, "--out", str(out)]) == 0, fmt
        back, rep = read_openaqa(out)
        assert expected and not rep.bad and _fields(back) == _fields(expected), fmt
        assert f"wrote {len(expected)} items" in capsys.readouterr().out
    assert {e.task for e in read_openaqa(tmp_path / "mmau.json")[0]} == {"reasoning"}
    assert all(e.metadata["references"] for e in read_openaqa(tmp_path / "clotho.json")[0])
    # bad invocations: one line naming the flag
    assert (
        main(
            [
                "convert",
                "audioset",
                str(FIX / "audioset" / "eval_segments.csv"),
                "--audio-dir",
                str(audio),
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert main(["convert", "esc50", str(FIX / "esc50" / "esc50.csv"), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "--labels: required for audioset" in err and "--audio-dir: required for esc50" in err
    assert not (tmp_path / "x.json").exists()


def test_csv_rows_with_bad_bytes_stray_commas_or_runaway_quotes_are_skipped_and_named(tmp_path):
    for name in ("1.wav", "2.wav", "3.wav", "4.wav", "5.wav", "6.wav"):
        _wav(tmp_path / name)
    lines = [
        "\ufeffaudiocap_id,youtube_id,start_time,caption",  # Excel's "CSV UTF-8" writes a byte-order mark
        "1,1,0,A dog barks",  # line 2: kept
        "2,2,0,A car passes, then a horn",  # line 3: unquoted comma splits the caption
        '3,3,0,"A door slams',  # line 4: an unterminated quote
        "4,4,0,Birds sing",
        "5,5,0,Rain falls",
        '6,6,0,Water runs"',  # line 7: the quote of line 4 ends here; lines 4-7 are one parsed row
        "6,6,0,Water runs",  # line 8: kept
    ]
    (tmp_path / "caps.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ex, rep = read_audiocaps(tmp_path / "caps.csv", tmp_path)
    bad = dict(rep.bad)
    assert [e.answer for e in ex] == ["A dog barks", "Water runs"]
    assert "5 fields, the header has 4" in bad[3]
    assert "runs over lines 4-7" in bad[4]
    assert rep.kept + len(rep.bad) == rep.rows and len(rep.bad) == 2
    (tmp_path / "latin1.csv").write_bytes(b"audiocap_id,youtube_id,start_time,caption\n5,5,0,Caf\xe9 chatter\n1,1,0,ok\n")
    ex, rep = read_audiocaps(tmp_path / "latin1.csv", tmp_path)
    assert [e.answer for e in ex] == ["ok"] and "not UTF-8 text (byte 0xe9)" in dict(rep.bad)[2]


def test_mmau_reader_skips_duplicate_ids_and_says_when_answers_differ(tmp_path):
    items = json.loads((FIX / "mmau" / "mmau-test-mini.json").read_text())[:3]
    twin = dict(items[0])
    other = dict(items[1], answer=next(c for c in items[1]["choices"] if c != items[1]["answer"]))
    (tmp_path / "m.json").write_text(json.dumps(items + [twin, other]))
    ex, rep = read_mmau(tmp_path / "m.json", check_audio=False)
    assert [e.id for e in ex] == [str(it["id"]) for it in items]
    bad = dict(rep.bad)
    assert bad[3] == f"duplicate id {items[0]['id']!r} (first at item 0)"
    assert bad[4] == f"duplicate id {items[1]['id']!r} with a different answer (first at item 1)"
