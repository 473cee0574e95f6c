"""Move a built corpus to a machine without the Debian packages (or without network) and back.

`export_corpus` packs ``root/corpus`` into one tar file: the manifest, class map and report as they
are, and every clip losslessly compressed to FLAC (PCM-16 in, PCM-16 out: about half the size of the
wavs). `import_corpus` unpacks it into another root and writes each clip back as the same 16 kHz PCM-16
wav at the manifest's path, so the manifest (and therefore `manifest_hash`, the scene and feature
caches and the run cache keys) is byte-identical to the source machine's.

Why not just copy the folder: the wavs are ~100 MB, and an offline GPU machine may only accept a
bounded upload; the FLAC archive is ~50 MB.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from sam.data.corpus import SAMPLE_RATE, CorpusError, corpus_complete, read_manifest
from sam.paths import UnsafePathError, confined

META_FILES = ("manifest.jsonl", "classes.json", "report.json")


def _flac_name(wav_path: str) -> str:
    return str(Path(wav_path).with_suffix(".flac"))


def export_corpus(root: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Write ``root/corpus`` to the tar file `out` (FLAC clips + metadata); returns `out`.

    Raises CorpusError when ``root`` holds no complete corpus. The archive is written to a temporary
    name and renamed, so an interrupted export never leaves a truncated file under `out`.
    """
    root, out = Path(root), Path(out)
    if not corpus_complete(root):
        raise CorpusError(f"{root / 'corpus'}: no complete corpus to export; run `sam prepare-data --root {root}` first")
    rows = read_manifest(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name in META_FILES:
            tar.add(root / "corpus" / name, arcname=f"corpus/{name}")
        for row in tqdm(rows, desc="export corpus", unit="clip", disable=not progress):
            wave, sr = sf.read(root / row["path"], dtype="int16", always_2d=False)
            buf = io.BytesIO()
            sf.write(buf, wave, sr, format="FLAC", subtype="PCM_16")
            data = buf.getvalue()  # not buf.tell(): libsndfile seeks back to finish the header
            info = tarfile.TarInfo(_flac_name(row["path"]))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return out


def _member(tar: tarfile.TarFile, name: str, archive: Path) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError:
        f = None
    except (tarfile.TarError, EOFError) as e:
        raise CorpusError(f"{archive}: cannot read member {name} ({e}); the archive is truncated or damaged") from None
    if f is None:
        raise CorpusError(f"{archive}: member {name} missing; the archive is not a `sam export-corpus` file or is truncated")
    return f.read()


def import_corpus(archive: str | Path, root: str | Path, progress: bool = True) -> Path:
    """Unpack an `export_corpus` archive into ``root/corpus``; returns ``root/corpus``.

    Each clip is checked against its manifest row (sample rate, sample count) and the manifest is
    written last, so a failed or interrupted import never looks complete. Errors name the archive
    member and the reason.
    """
    archive, root = Path(archive), Path(root)
    if not archive.is_file():
        raise CorpusError(f"{archive}: corpus archive not found")
    corpus = root / "corpus"
    try:
        tar = tarfile.open(archive, "r")
    except tarfile.TarError as e:
        raise CorpusError(f"{archive}: not a readable tar file ({e})") from None
    with tar:
        meta = {name: _member(tar, f"corpus/{name}", archive) for name in META_FILES}
        rows: list[dict[str, Any]] = []
        dests: list[Path] = []
        try:
            manifest = meta["manifest.jsonl"].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"{archive}: corpus/manifest.jsonl: not UTF-8 ({e})") from None
        for i, line in enumerate(manifest.splitlines(), start=1):
            where = f"{archive}: corpus/manifest.jsonl line {i}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not isinstance(row.get("num_samples"), int):
                raise CorpusError(f"{where}: expected an object with a string `path` and an integer `num_samples`")
            try:
                # Every path is checked before anything is written: a bad row leaves `root` untouched.
                dests.append(confined(root, row["path"]))
            except UnsafePathError as e:
                raise CorpusError(f"{where}: {e}") from None
            rows.append(row)
        for row, dest in zip(tqdm(rows, desc="import corpus", unit="clip", disable=not progress), dests):
            name = _flac_name(row["path"])
            wave, sr = sf.read(io.BytesIO(_member(tar, name, archive)), dtype="int16", always_2d=False)
            if sr != SAMPLE_RATE or wave.ndim != 1 or wave.size != row["num_samples"]:
                raise CorpusError(
                    f"{archive}: {name}: {wave.size} samples at {sr} Hz, manifest says {row['num_samples']} mono at {SAMPLE_RATE} Hz"
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dest, np.ascontiguousarray(wave), sr, subtype="PCM_16")
    corpus.mkdir(parents=True, exist_ok=True)
    for name in ("classes.json", "report.json", "manifest.jsonl"):  # the manifest last: its presence means "complete"
        tmp = corpus / (name + ".tmp")
        tmp.write_bytes(meta[name])
        os.replace(tmp, corpus / name)
    return corpus
