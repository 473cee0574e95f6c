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
