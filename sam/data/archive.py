"""Move a built corpus to a machine without the Debian packages (or without network) and back.

`export_corpus` packs ``root/corpus`` into one tar file: the manifest, class map and report as they
are, and every clip losslessly compressed to FLAC (PCM-16 in, PCM-16 out: about half the size of the
wavs). `import_corpus` unpacks it into another root and writes each clip back as the same 16 kHz PCM-16
wav at the manifest's path, so the manifest (and therefore `manifest_hash`, the scene and feature
caches and the run cache keys) is byte-identical to the source machine's.

Why not just copy the folder: an offline GPU machine may only accept a bounded upload. The wavs of
corpus v2 are ~580 MB and its FLAC archive ~320 MB. `codec="opus"` packs every clip as Ogg Opus
instead (about 19 kbit/s at the default level, ~45 MB): lossy, so the clips on the other machine are
not the same audio. The archive then carries ``corpus/transcode.json`` saying so, `import_corpus`
writes it beside the manifest, and `transcoded` reads it back: results measured on such a copy name
the codec. The manifest (labels, lengths, splits) stays byte-identical either way.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from sam.data.corpus import SAMPLE_RATE, CorpusError, corpus_complete, read_manifest
from sam.paths import UnsafePathError, confined

META_FILES = ("manifest.jsonl", "classes.json", "report.json")
TRANSCODE_FILE = "transcode.json"  # present only in a lossy archive and in a corpus imported from one
CODECS = {"flac": ".flac", "opus": ".opus"}
OPUS_LEVEL = 0.96  # libsndfile's compression level (0 = largest, 1 = smallest): ~19 kbit/s on this corpus


def _member_name(wav_path: str, codec: str) -> str:
    return str(Path(wav_path).with_suffix(CODECS[codec]))


def _encode(path: Path, codec: str, level: float) -> bytes:
    buf = io.BytesIO()
    if codec == "flac":
        wave, sr = sf.read(path, dtype="int16", always_2d=False)
        sf.write(buf, wave, sr, format="FLAC", subtype="PCM_16")
    else:
        wave, sr = sf.read(path, dtype="float32", always_2d=False)
        sf.write(buf, wave, sr, format="OGG", subtype="OPUS", compression_level=level)
    return buf.getvalue()  # not buf.tell(): libsndfile seeks back to finish the header


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def export_corpus(
    root: str | Path, out: str | Path, progress: bool = True, codec: str = "flac", level: float = OPUS_LEVEL, workers: int = 4
) -> Path:
    """Write ``root/corpus`` to the tar file `out` (clips in `codec` + metadata); returns `out`.

    `codec` is "flac" (lossless) or "opus" (lossy, `level` in [0, 1]; module docstring). Raises
    CorpusError when ``root`` holds no complete corpus. The archive is written to a temporary name and
    renamed, so an interrupted export never leaves a truncated file under `out`.
    """
    root, out = Path(root), Path(out)
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} unknown; choose one of {', '.join(CODECS)}")
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level must lie in [0, 1], got {level}")
    if not corpus_complete(root):
        raise CorpusError(f"{root / 'corpus'}: no complete corpus to export; run `sam prepare-data --root {root}` first")
    rows = read_manifest(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tar, ThreadPoolExecutor(max(1, workers)) as pool:
        for name in META_FILES:
            tar.add(root / "corpus" / name, arcname=f"corpus/{name}")
        if codec != "flac":
            note = {
                "codec": codec,
                "compression_level": level,
                "lossless": False,
                "note": "clips were transcoded for transfer; the audio differs from the source machine's",
            }
            _add(tar, f"corpus/{TRANSCODE_FILE}", json.dumps(note, indent=1).encode())
        encoded = pool.map(lambda row: _encode(root / row["path"], codec, level), rows)  # libsndfile calls release the GIL
        for row, data in zip(tqdm(rows, desc="export corpus", unit="clip", disable=not progress), encoded):
            _add(tar, _member_name(row["path"], codec), data)
    os.replace(tmp, out)
    return out


def transcoded(root: str | Path) -> dict[str, Any] | None:
    """The transcode note of a corpus imported from a lossy archive, else None (the clips are the originals)."""
    path = Path(root) / "corpus" / TRANSCODE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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


def import_corpus(archive: str | Path, root: str | Path, progress: bool = True, workers: int = 8) -> Path:
    """Unpack an `export_corpus` archive into ``root/corpus``; returns ``root/corpus``.

    Each clip is checked against its manifest row (sample rate, sample count) and the manifest is
    written last, so a failed or interrupted import never looks complete. Errors name the archive
    member and the reason. A lossy archive's transcode note is written to ``root/corpus`` (`transcoded`).
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
        names = set(tar.getnames())
        note = _member(tar, f"corpus/{TRANSCODE_FILE}", archive) if f"corpus/{TRANSCODE_FILE}" in names else None
        codec = json.loads(note)["codec"] if note else "flac"
        if codec not in CODECS:
            raise CorpusError(f"{archive}: corpus/{TRANSCODE_FILE}: codec {codec!r} unknown")

        def restore(item: tuple[dict[str, Any], Path, str, bytes]) -> None:
            row, dest, name, data = item
            try:
                wave, sr = sf.read(io.BytesIO(data), dtype="int16", always_2d=False)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise CorpusError(f"{archive}: {name}: not a readable {codec} clip ({e})") from None
            if sr != SAMPLE_RATE or wave.ndim != 1 or wave.size != row["num_samples"]:
                raise CorpusError(
                    f"{archive}: {name}: {wave.size} samples at {sr} Hz, manifest says {row['num_samples']} mono at {SAMPLE_RATE} Hz"
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dest, np.ascontiguousarray(wave), sr, subtype="PCM_16")

        def members():  # the tar is read in order here; decoding and writing run in the pool
            for row, dest in zip(rows, dests):
                name = _member_name(row["path"], codec)
                yield row, dest, name, _member(tar, name, archive)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for _ in tqdm(pool.map(restore, members()), total=len(rows), desc="import corpus", unit="clip", disable=not progress):
                pass
    corpus.mkdir(parents=True, exist_ok=True)
    if note:
        (corpus / TRANSCODE_FILE).write_bytes(note)
    else:
        (corpus / TRANSCODE_FILE).unlink(missing_ok=True)
    for name in ("classes.json", "report.json", "manifest.jsonl"):  # the manifest last: its presence means "complete"
        tmp = corpus / (name + ".tmp")
        tmp.write_bytes(meta[name])
        os.replace(tmp, corpus / name)
    return corpus
