"""Files from disk are untrusted: crafted archives, checkpoints and run folders can neither write
outside their root nor run code, and damaged ones are named in a one-line error."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sam.data.corpus import CorpusError, read_manifest

ROOT = Path(__file__).resolve().parents[1] / "data"


def _real_clip() -> tuple[np.ndarray, dict]:
    if not (ROOT / "corpus" / "manifest.jsonl").is_file():
        pytest.skip("needs the corpus in data/ (sam prepare-data)")
    row = read_manifest(ROOT)[0]
    wave, _ = sf.read(ROOT / row["path"], dtype="int16")
    return wave, row


def _archive(path: Path, clip_path: str) -> Path:
    """An archive in `sam export-corpus`'s layout whose one manifest row names `clip_path`."""
    wave, row = _real_clip()
    row = {**row, "path": clip_path}
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("corpus/manifest.jsonl", (json.dumps(row) + "\n").encode())
        add("corpus/classes.json", b"{}")
        add("corpus/report.json", b"{}")
        buf = io.BytesIO()
        sf.write(buf, wave, 16000, format="FLAC", subtype="PCM_16")
        add(str(Path(clip_path).with_suffix(".flac")), buf.getvalue())
    return path


@pytest.mark.parametrize("clip_path", ["../../escaped.wav", "/tmp/sam-abs-escape/escaped.wav", "corpus/../../escaped.wav"])
def test_archive_manifest_paths_cannot_write_outside_root(tmp_path: Path, clip_path: str, capsys) -> None:
    from sam.cli import main
    from sam.data.archive import import_corpus

    root = tmp_path / "a" / "b" / "root"
    archive = _archive(tmp_path / "evil.tar", clip_path)
    with pytest.raises(CorpusError, match=r"evil\.tar: corpus/manifest\.jsonl line 1: path .*(absolute|'\.\.')"):
        import_corpus(archive, root, progress=False)
    assert main(["prepare-data", "--from-archive", str(archive), "--root", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 1" in err[0]
    written = [p for p in tmp_path.rglob("*.wav")] + list(Path("/tmp/sam-abs-escape").glob("*"))
    assert written == []
    assert not (root / "corpus" / "manifest.jsonl").exists()


def test_archive_path_through_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    from sam.data.archive import import_corpus

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "corpus").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, root / "corpus" / "clips")
    archive = _archive(tmp_path / "link.tar", "corpus/clips/x.wav")
    with pytest.raises(CorpusError, match="symbolic link"):
        import_corpus(archive, root, progress=False)
    assert list(outside.iterdir()) == []


def test_archive_with_safe_path_still_imports(tmp_path: Path) -> None:
    from sam.data.archive import import_corpus

    wave, _ = _real_clip()
    import_corpus(_archive(tmp_path / "ok.tar", "corpus/clips/x.wav"), tmp_path / "root", progress=False)
    back, sr = sf.read(tmp_path / "root" / "corpus" / "clips" / "x.wav", dtype="int16")
    assert sr == 16000 and np.array_equal(back, wave)


class _RunsCode:
    """A pickle payload that, when unpickled without restrictions, creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_checkpoint_runs_no_code_and_falls_back_to_the_older_one(tmp_path: Path, capsys) -> None:
    import torch

    from sam.checkpoint import LATEST, checkpoint_path, load_latest, save_checkpoint

    save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.arange(3)})
    marker = tmp_path.parent / f"{tmp_path.name}-pwned"
    torch.save({"step": 9, "x": _RunsCode(marker)}, checkpoint_path(tmp_path, 9))
    (tmp_path / LATEST).write_text("step-00000009.pt")  # whoever can plant a file can move the pointer too
    state = load_latest(tmp_path)
    assert not marker.exists()
    assert state["step"] == 2
    err = capsys.readouterr().err
    assert "step-00000009.pt" in err and "cannot be loaded safely" in err


def test_random_bytes_newest_checkpoint_is_named_and_skipped(tmp_path: Path, capsys) -> None:
    import torch

    from sam.checkpoint import LATEST, checkpoint_path, load_latest, save_checkpoint

    save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.arange(3)})
    checkpoint_path(tmp_path, 4).write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / LATEST).write_text("step-00000004.pt")
    assert load_latest(tmp_path)["step"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step-00000004.pt" in err[0] and "truncated or damaged" in err[0]


def test_old_format_checkpoint_alone_is_a_one_line_error(tmp_path: Path) -> None:
    import random

    import torch

    from sam.checkpoint import CheckpointError, checkpoint_path, load_latest

    # The earlier layout pickled NumPy's RNG state (an ndarray) and Python's tuple: not weights-only.
    torch.save({"step": 3, "rng": [{"numpy": np.random.get_state(), "python": random.getstate()}]}, checkpoint_path(tmp_path, 3))
    with pytest.raises(CheckpointError, match=r"step-00000003\.pt: holds Python objects \(numpy\.") as e:
        load_latest(tmp_path)
    assert "\n" not in str(e.value)


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import torch

    from sam.checkpoint import load_latest, save_checkpoint
    from sam.train.rng import rng_state, seed_all, set_rng_state

    seed_all(123)
    random.random(), np.random.standard_normal(), torch.rand(2)
    save_checkpoint(tmp_path, 1, {"step": 1, "rng": [rng_state()]})
    expected = (random.random(), float(np.random.standard_normal()), torch.rand(3))
    seed_all(7)
    set_rng_state(load_latest(tmp_path)["rng"][0])
    got = (random.random(), float(np.random.standard_normal()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_manifest_paths_are_confined_when_clips_are_read(tmp_path: Path) -> None:
    from sam.data.corpus import read_clip

    (tmp_path / "secret.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"manifest\.jsonl: clip 'x': path '\.\./secret\.wav': holds '\.\.'"):
        read_clip(tmp_path / "root", {"id": "x", "path": "../secret.wav"})


def test_a_failed_atomic_write_names_its_target(tmp_path: Path) -> None:
    from sam.checkpoint import atomic_write_bytes

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    (tmp_path / "t").mkdir()
    target = tmp_path / "t" / "metrics.json"
    os.symlink("/dev/full", tmp_path / "t" / f".metrics.json.tmp-{os.getpid()}")  # writes there fail with ENOSPC
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"x" * 100000)
    assert info.value.filename == str(target) and "No space left" in str(info.value)
    assert not target.exists()
