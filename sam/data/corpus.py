"""Build the embedded real-audio corpus: extract every clip of the Debian sound packages (or a user
folder), decode, resample to 16 kHz mono, trim silence, and write wavs + manifest + class map.

The sources: game sounds and soundtracks (ufoai, OpenSFX, sonic-pi, fillets-ng, colobot), Asterisk
prompts in five languages with transcripts, and instrument / drum notes that fluidsynth renders from
recorded-sample soundfonts (`sam.data.sources`). Every label comes from a rule on a name or metadata
(`sam.data.classes`); an entry no rule labels is reported and skipped, never guessed.

Layout written under ``root``::

    corpus/audio/<source>/<name>.wav   16 kHz mono PCM-16, leading/trailing silence trimmed
    corpus/manifest.jsonl              one row per clip (see `ManifestRow` fields below)
    corpus/classes.json                sound-event classes with >= `min_clips` source clips
    corpus/report.json                 skipped entries with the reason, plus build info

Trimming matters: a clip's first sample is where its sound starts, so scene onsets are exact.
This module never downloads anything and never writes outside ``root``; unreadable entries are
reported and skipped, never silently dropped or invented.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import re
import struct
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from sam.data import classes as C
from sam.data.clips import CorpusError, RawClip, read_transcripts
from sam.model.audio import AudioError, load_audio

CORPUS_VERSION = 2
SAMPLE_RATE = 16000
MIN_CLIPS = 25  # a class needs this many source clips: enough for >= 5 in every split
# Sound starts where a 10 ms frame first reaches 1% (-40 dB) of the clip's peak.
TRIM_DB = -40.0
MIN_SECONDS = 0.02
SILENCE_PEAK = 1e-3  # a clip whose peak stays below -60 dBFS is silence, not a sound event
NO_LABEL = "no label: no rule derives one from its name or metadata"  # reported, never guessed

UFOAI_PK3 = Path("/usr/share/games/ufoai/base/0snd.pk3")
UFOAI_COPYRIGHT = Path("/usr/share/doc/ufoai-sound/copyright")
OPENSFX_CAT = Path("/usr/share/games/openttd/baseset/opensfx/opensfx.cat")
SONICPI_DIR = Path("/usr/share/sonic-pi/samples")
ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
DEBIAN_PACKAGES = {
    "ufoai-sound": [UFOAI_PK3],
    "openttd-opensfx": [OPENSFX_CAT],
    "sonic-pi-samples": [SONICPI_DIR],
    "asterisk-core-sounds-en-wav": [ASTERISK_DIR],
    "asterisk-core-sounds-en": [ASTERISK_TEXT],
    "fillets-ng-data": [Path("/usr/share/games/fillets-ng/sound")],
    "colobot-common-sounds": [Path("/usr/share/games/colobot/music")],
    "fluid-soundfont-gm": [Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")],
    "avldrums.lv2-soundfont": [Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2")],
    "fluidsynth": [Path("/usr/bin/fluidsynth")],
}
for _lang in ("es", "fr", "it", "ru"):
    DEBIAN_PACKAGES[f"asterisk-core-sounds-{_lang}"] = [Path(f"/usr/share/doc/asterisk-core-sounds-{_lang}/core-sounds-{_lang}.txt.gz")]
    DEBIAN_PACKAGES[f"asterisk-core-sounds-{_lang}-wav"] = [Path(f"/usr/share/doc/asterisk-core-sounds-{_lang}-wav")]


# --------------------------------------------------------------------------------------------
# Sources


def _dep5_licences(path: Path) -> list[tuple[list[str], str]]:
    """(file globs, licence) paragraphs of a Debian machine-readable copyright file, in order."""
    out: list[tuple[list[str], str]] = []
    for para in re.split(r"\n\s*\n", path.read_text(errors="replace")):
        fields: dict[str, list[str]] = {}
        key = None
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key].append(line.strip())
            elif ":" in line:
                key, _, val = line.partition(":")
                fields[key] = [val.strip()] if val.strip() else []
        if "Files" in fields and "License" in fields:
            globs = [g for v in fields["Files"] for g in v.split()]
            out.append((globs, fields["License"][0]))
    return out


def _licence_for(name: str, paragraphs: list[tuple[list[str], str]]) -> str:
    found = "unknown"
    for globs, licence in paragraphs:  # DEP-5: the last matching paragraph wins
        if any(fnmatch.fnmatchcase(name, g) for g in globs):
            found = licence
    return found


def iter_ufoai(pk3: Path = UFOAI_PK3, copyright_file: Path = UFOAI_COPYRIGHT) -> Iterator[RawClip]:
    """Every .ogg in ufoai's ``0snd.pk3`` (a zip), labelled by folder and file name."""
    paragraphs = _dep5_licences(copyright_file) if copyright_file.exists() else []
    with zipfile.ZipFile(pk3) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not info.filename.lower().endswith((".ogg", ".wav")):
                continue
            key = info.filename.rsplit(".", 1)[0]
            labels, phrase = C.classify_ufoai(key)
            yield RawClip(
                id="ufoai/" + key.removeprefix("sound/"),
                source="ufoai-sound",
                origin=f"{pk3.name}:{info.filename}",
                data=z.read(info),
                labels=labels,
                phrase=phrase,
                caption=phrase,
                caption_kind="derived",
                licence=_licence_for("base/" + info.filename, paragraphs),
            )


def parse_opensfx_cat(path: Path) -> list[tuple[int, str, bytes]]:
    """Entries (index, caption string, RIFF bytes) of an OpenSFX ``.cat`` file.

    Format: a table of little-endian uint32 (offset, size) pairs whose first offset (high bit is a
    flag) also gives the table length; each entry is a length byte, a NUL-terminated caption, then
    ``size`` bytes of sound data (a RIFF WAV).
    """
    blob = path.read_bytes()
    if len(blob) < 8:
        raise CorpusError(f"{path}: too short to be an OpenSFX .cat file ({len(blob)} bytes)")
    n = (struct.unpack_from("<I", blob, 0)[0] & 0x7FFFFFFF) // 8
    entries = []
    for i in range(n):
        off, size = struct.unpack_from("<II", blob, 8 * i)
        off &= 0x7FFFFFFF
        if off >= len(blob) or off + 1 + blob[off] + size > len(blob):
            raise CorpusError(f"{path}: entry {i} points outside the file (offset {off}, size {size})")
        name_len = blob[off]
        caption = blob[off + 1 : off + 1 + name_len].split(b"\0")[0].decode("latin-1")
        start = off + 1 + name_len
        entries.append((i, caption, blob[start : start + size]))
    return entries


def iter_opensfx(cat: Path = OPENSFX_CAT) -> Iterator[RawClip]:
    """Every sound of OpenSFX with its one-line human caption and per-sound licence."""
    for i, caption, riff in parse_opensfx_cat(cat):
        title = C.opensfx_title(caption)
        labels, phrase = C.classify_opensfx(caption)
        m = re.search(r"License:\s*([^.]+(?:\.\d[^.]*)?)", caption)
        slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
        yield RawClip(
            id=f"opensfx/{i:02d}_{slug}",
            source="openttd-opensfx",
            origin=f"{cat.name}#{i}",
            data=riff,
            labels=labels,
            phrase=phrase,
            caption=title,
            caption_kind="human",
            licence=m.group(1).strip() if m else "CC-BY-SA-3.0",
        )


def iter_sonicpi(folder: Path = SONICPI_DIR) -> Iterator[RawClip]:
    """Every sonic-pi sample (CC0, freesound.org), labelled by its file-name prefix."""
    for path in sorted(folder.glob("*.flac")):
        labels, phrase = C.classify_sonicpi(path.stem)
        yield RawClip(
            id=f"sonicpi/{path.stem}",
            source="sonic-pi-samples",
            origin=path.name,
            data=path,
            labels=labels,
            phrase=phrase,
            caption=phrase,
            caption_kind="derived",
            licence="CC0-1.0",
        )


def read_asterisk_transcripts(path: Path = ASTERISK_TEXT) -> dict[str, str]:
    """``name: text`` lines of core-sounds-en.txt.gz (``;`` lines are comments)."""
    return read_transcripts(path)


def iter_asterisk(folder: Path = ASTERISK_DIR, transcripts: Path = ASTERISK_TEXT) -> Iterator[RawClip]:
    """Every English Asterisk prompt (Allison Smith, CC-BY-SA-3.0) with its exact transcript."""
    text = read_asterisk_transcripts(transcripts)
    for path in sorted(folder.rglob("*.wav")):
        name = path.relative_to(folder).with_suffix("").as_posix()
        t = text.get(name)
        if t is None:
            labels, phrase, caption, kind = ["English speech"], "a woman speaking", "a woman speaking", "derived"
        else:
            labels, phrase = C.classify_speech(t)
            caption, kind = t, "transcript"
        yield RawClip(
            id=f"asterisk/{name}",
            source="asterisk-core-sounds-en",
            origin=path.relative_to(folder.parent).as_posix(),
            data=path,
            labels=labels,
            phrase=phrase,
            caption=caption,
            caption_kind=kind,
            licence="CC-BY-SA-3.0",
            transcript=t if labels == ["English speech"] else None,
        )


def iter_folder(root: Path) -> Iterator[RawClip]:
    """A user folder: ``root/audio/...`` + ``root/labels.csv`` with columns path, labels, caption.

    ``labels`` holds class names separated by ``;`` or ``|``. Rows naming missing files still come
    out (decoding reports them); rows without a path raise CorpusError naming the line.
    """
    table = root / "labels.csv"
    if not table.is_file():
        raise CorpusError(f"{table}: missing; a folder corpus needs labels.csv with columns path, labels, caption")
    with open(table, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"path", "labels"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise CorpusError(f"{table}: header must contain path, labels (and optionally caption); got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            rel = (row.get("path") or "").strip()
            if not rel:
                raise CorpusError(f"{table} line {line}: empty path")
            labels = [x.strip() for x in re.split(r"[;|]", row.get("labels") or "") if x.strip()]
            caption = (row.get("caption") or "").strip()
            stem = re.sub(r"[^A-Za-z0-9_/-]+", "_", str(Path(rel).with_suffix("")))
            phrase = caption or (" and ".join(labels) if labels else Path(rel).stem)
            yield RawClip(
                id=f"folder/{stem}",
                source="folder",
                origin=f"labels.csv line {line}",
                data=root / "audio" / rel,
                labels=labels,
                phrase=phrase,
                caption=caption or phrase,
                caption_kind="human" if caption else "derived",
                licence=(row.get("licence") or row.get("license") or "user-supplied").strip(),
            )


def check_debian_sources() -> None:
    """Raise CorpusError naming every missing Debian package (and how to install it)."""
    missing = [pkg for pkg, paths in DEBIAN_PACKAGES.items() if not all(p.exists() for p in paths)]
    if missing:
        raise CorpusError(
            f"Debian sound packages missing: {', '.join(missing)}. Install them with "
            f"`sudo apt-get install {' '.join(missing)}` (scripts/install.sh does this), or build from your own "
            f"folder with DataConfig(source='folder') and root/audio + root/labels.csv."
        )


def iter_debian() -> Iterator[RawClip]:
    check_debian_sources()
    yield from iter_ufoai()
    yield from iter_opensfx()
    yield from iter_sonicpi()
    yield from iter_asterisk()
    from sam.data.sources import iter_more  # sources.py builds on this module's RawClip

    yield from iter_more()


# --------------------------------------------------------------------------------------------
# Processing


def trim_silence(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, db: float = TRIM_DB) -> np.ndarray:
    """Cut leading/trailing samples quieter than `db` below the peak (sample-exact); silence -> empty."""
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak < SILENCE_PEAK:
        return wave[:0]
    loud = np.flatnonzero(np.abs(wave) >= peak * 10 ** (db / 20))
    return wave[loud[0] : loud[-1] + 1]


def active_rms(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """RMS over the 10 ms frames within 30 dB of the loudest frame (loudness of the sound itself, not its pauses)."""
    hop = sample_rate // 100
    n = max(1, wave.size // hop)
    frames = wave[: n * hop].reshape(n, -1) if wave.size >= hop else wave.reshape(1, -1)
    e = (frames.astype(np.float64) ** 2).mean(axis=1)
    keep = e >= e.max() * 1e-3
    return float(np.sqrt(e[keep].mean()))


def _process(raw: RawClip, root: Path) -> dict[str, Any]:
    """Decode, resample, trim and write one clip; returns its manifest row. Raises AudioError if unusable."""
    wave = load_audio(raw.data if isinstance(raw.data, bytes) else Path(raw.data), SAMPLE_RATE)
    wave = trim_silence(wave)
    if wave.size < MIN_SECONDS * SAMPLE_RATE:
        raise AudioError(f"{raw.origin}: silent or shorter than {MIN_SECONDS} s after trimming")
    peak = float(np.abs(wave).max())
    if peak > 0.999:  # resampling can overshoot; PCM-16 must not clip
        wave = wave * (0.999 / peak)
    rel = Path("corpus") / "audio" / (raw.id + ".wav")
    out = root / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, wave, SAMPLE_RATE, subtype="PCM_16")
    return {
        "id": raw.id,
        "source": raw.source,
        "origin": raw.origin,
        "path": rel.as_posix(),
        "duration": round(wave.size / SAMPLE_RATE, 4),
        "num_samples": int(wave.size),
        "labels": raw.labels,
        "phrase": raw.phrase,
        "caption": raw.caption,
        "caption_kind": raw.caption_kind,
        "transcript": raw.transcript,
        "licence": raw.licence,
        "rms": round(active_rms(wave), 6),
    }


def build_class_map(rows: list[dict[str, Any]], min_clips: int = MIN_CLIPS) -> dict[str, Any]:
    """Classes with >= min_clips source clips (counts, sources, group); the rest listed as dropped."""
    counts: Counter[str] = Counter(lab for r in rows for lab in r["labels"] if lab != C.AMBIENCE)
    sources: dict[str, Counter[str]] = {}
    for r in rows:
        for lab in r["labels"]:
            sources.setdefault(lab, Counter())[r["source"]] += 1
    kept = {
        name: {"clips": n, "group": C.CLASS_GROUPS.get(name, "a sound source"), "sources": dict(sources[name])}
        for name, n in sorted(counts.items())
        if n >= min_clips
    }
    dropped = {name: n for name, n in sorted(counts.items()) if n < min_clips}
    return {"min_clips": min_clips, "classes": kept, "dropped": dropped, "ambience_clips": sum(C.AMBIENCE in r["labels"] for r in rows)}


def _source_of(root: str | Path | Any, source: str | None) -> tuple[Path, str]:
    """Accept a path or a DataConfig (anything with .root and .source)."""
    if hasattr(root, "root") and hasattr(root, "source"):
        return Path(root.root), source or root.source
    return Path(root), source or "debian"


def corpus_complete(root: str | Path) -> bool:
    """True when manifest, class map and report exist for this CORPUS_VERSION and every clip file is present."""
    corpus = Path(root) / "corpus"
    try:
        info = json.loads((corpus / "report.json").read_text())
        rows = read_manifest(root)
        json.loads((corpus / "classes.json").read_text())
    except (OSError, ValueError, CorpusError):
        return False
    return info.get("version") == CORPUS_VERSION and all((Path(root) / r["path"]).is_file() for r in rows)


def prepare_corpus(
    root: str | Path | Any = "data", force: bool = False, source: str | None = None, min_clips: int = MIN_CLIPS, progress: bool = True
) -> Path:
    """Build ``root/corpus`` (idempotent: returns at once when a complete corpus is already there).

    `root` may be a path or a `DataConfig` (its ``root`` and ``source`` are used). ``source`` is
    ``"debian"`` (the Debian sound packages in `DEBIAN_PACKAGES`) or ``"folder"`` (``root/audio`` + ``root/labels.csv``).
    Unreadable or unlabelled entries are printed, written to ``corpus/report.json`` and skipped. Returns ``root/corpus``.
    """
    root, source = _source_of(root, source)
    corpus = root / "corpus"
    if not force and corpus_complete(root):
        return corpus
    if source == "debian":
        raws: Iterator[RawClip] = iter_debian()
    elif source == "folder":
        raws = iter_folder(root)
    else:
        hint = " (source 'openaqa' reads instruction JSON and builds no corpus)" if source == "openaqa" else ""
        raise CorpusError(f"DataConfig.source={source!r}: no corpus to build; choose 'debian' or 'folder'{hint}")
    corpus.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for raw in tqdm(raws, desc=f"corpus ({source})", unit="clip", disable=not progress):
        if not raw.labels:  # never guess a label: report the entry instead
            skipped.append({"id": raw.id, "origin": raw.origin, "reason": NO_LABEL})
            continue
        try:
            rows.append(_process(raw, root))
        except AudioError as e:
            skipped.append({"id": raw.id, "origin": raw.origin, "reason": str(e)})
    if not rows:
        raise CorpusError(f"{corpus}: no decodable clips found for source {source!r}")
    class_map = build_class_map(rows, min_clips)
    (corpus / "classes.json").write_text(json.dumps(class_map, indent=1))
    tmp = corpus / "manifest.jsonl.tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    report = {
        "version": CORPUS_VERSION,
        "source": source,
        "clips": len(rows),
        "skipped": skipped,
        "classes": len(class_map["classes"]),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 3),
    }
    (corpus / "report.json").write_text(json.dumps(report, indent=1))
    os.replace(tmp, corpus / "manifest.jsonl")  # the manifest appears last: its presence means "complete"
    for s in skipped:
        print(f"[corpus] skipped {s['id']}: {s['reason']}")
    print(
        f"[corpus] {len(rows)} clips, {len(class_map['classes'])} classes (>= {min_clips} clips), "
        f"{report['hours']} h, {len(skipped)} skipped -> {corpus}"
    )
    return corpus


# --------------------------------------------------------------------------------------------
# Reading back


def read_manifest(root: str | Path) -> list[dict[str, Any]]:
    """Manifest rows of ``root/corpus``; CorpusError (saying to run `sam prepare-data`) if absent."""
    path = Path(root) / "corpus" / "manifest.jsonl"
    if not path.is_file():
        raise CorpusError(f"{path}: no corpus here; run `sam prepare-data --root {root}` first")
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path} line {i}: not valid JSON ({e})") from None
    return rows


def read_class_map(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "corpus" / "classes.json"
    if not path.is_file():
        raise CorpusError(f"{path}: no class map; run `sam prepare-data --root {root}` first")
    return json.loads(path.read_text())


def read_clip(root: str | Path, row: dict[str, Any], frames: int = -1) -> np.ndarray:
    """The first `frames` samples (all with -1) of a manifest clip as float32 at 16 kHz."""
    from sam.paths import UnsafePathError, confined

    try:  # a manifest is a file from disk: its paths may not lead out of the corpus root
        path = confined(root, row["path"])
    except UnsafePathError as e:
        raise CorpusError(f"{Path(root) / 'corpus' / 'manifest.jsonl'}: clip {row.get('id')!r}: {e}") from None
    wave, sr = sf.read(path, frames=frames, dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE:
        raise CorpusError(f"{row['path']}: sample rate {sr}, expected {SAMPLE_RATE}; rebuild with prepare_corpus(force=True)")
    return wave


def manifest_hash(root: str | Path) -> str:
    """Short sha256 of the manifest file: names caches that depend on the corpus contents."""
    import hashlib

    path = Path(root) / "corpus" / "manifest.jsonl"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
