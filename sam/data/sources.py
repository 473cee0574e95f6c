"""Corpus sources beyond the first four packages: Asterisk prompts in four more languages, fillets-ng
and colobot game audio, and instrument / drum notes rendered from recorded-sample soundfonts.

Every clip's label comes from an explicit rule in `sam.data.classes` applied to its file name, folder
or preset name; entries no rule claims are yielded with no labels, and `prepare_corpus` reports and
skips them. Soundfont notes are *synthesized* by fluidsynth from the soundfont's recorded samples:
their manifest ``source`` says so.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import soundfile as sf

from sam.data import classes as C
from sam.data.clips import CorpusError, RawClip, read_transcripts

ASTERISK_ROOT = Path("/usr/share/asterisk/sounds")
ASTERISK_DOCS = Path("/usr/share/doc")
ASTERISK_LANGS = ("es", "fr", "it", "ru")
FILLETS_DIR = Path("/usr/share/games/fillets-ng")
COLOBOT_MUSIC = Path("/usr/share/games/colobot/music")
FLUID_SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
AVLDRUMS_SF2 = (Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"), Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"))
FLUIDSYNTH = "fluidsynth"

NOTES_PER_CLASS = 36  # rendered notes per instrument class, spread over its range and three velocities
VELOCITIES = (70, 100, 120)
HOLD_S, SLOT_S = 2.0, 4.0  # a note is held HOLD_S and has SLOT_S before the next one starts (its release)
RENDER_RATE = 44100


def asterisk_folder(lang: str) -> Path:
    """The one voice folder of an Asterisk language (e.g. ``es_MX_f_Allison``); CorpusError if absent."""
    found = sorted(ASTERISK_ROOT.glob(f"{lang}_*_*_*"))
    if not found:
        raise CorpusError(f"{ASTERISK_ROOT}/{lang}_*: missing; install asterisk-core-sounds-{lang}-wav")
    return found[0]


def iter_asterisk_lang(lang: str) -> Iterator[RawClip]:
    """Every prompt of one Asterisk language with its transcript; language and speaker's sex come
    from the voice folder's name. Prompts without a transcript line are yielded unlabelled (skipped)."""
    folder = asterisk_folder(lang)
    _, region, sex, voice = folder.name.split("_", 3)
    if lang not in C.LANGUAGES or sex not in C.SPEAKERS:
        raise CorpusError(f"{folder}: cannot read language/sex from the folder name")
    text = read_transcripts(ASTERISK_DOCS / f"asterisk-core-sounds-{lang}" / f"core-sounds-{lang}.txt.gz")
    for path in sorted(folder.rglob("*.wav")):
        name = path.relative_to(folder).with_suffix("").as_posix()
        t = text.get(name)
        labels, phrase = C.classify_speech(t, C.LANGUAGES[lang], C.SPEAKERS[sex]) if t else ([], name)
        yield RawClip(
            id=f"asterisk-{lang}/{name}",
            source=f"asterisk-core-sounds-{lang}",
            origin=f"{folder.name}/{name}.wav",
            data=path,
            labels=labels,
            phrase=phrase,
            caption=t or name,
            caption_kind="transcript" if t else "derived",
            licence="CC-BY-SA-3.0",
            transcript=t if labels and C.is_speech(labels[0]) else None,
        )


def iter_fillets(folder: Path = FILLETS_DIR) -> Iterator[RawClip]:
    """fillets-ng sounds labelled by `classes.FILLETS_RULES` (GPL-2+); the rest are yielded unlabelled."""
    for path in sorted((folder / "sound").rglob("*.ogg")):
        rel = path.relative_to(folder / "sound").with_suffix("")
        key = "/".join(p for p in rel.parts if p != "en")  # sounds sit in per-level "en" folders
        labels, phrase = C.classify_fillets(key)
        yield RawClip(
            id=f"fillets/{rel.as_posix()}",
            source="fillets-ng-data",
            origin=f"sound/{rel.as_posix()}.ogg",
            data=path,
            labels=labels,
            phrase=phrase,
            caption=phrase,
            caption_kind="derived",
            licence="GPL-2+",
        )


def iter_music(fillets: Path = FILLETS_DIR, colobot: Path = COLOBOT_MUSIC) -> Iterator[RawClip]:
    """The game soundtracks of fillets-ng (GPL-2+) and colobot (GPL-3+): whole tracks, class music."""
    for pkg, folder, licence in (("fillets-ng-data", fillets / "music", "GPL-2+"), ("colobot-common-sounds", colobot, "GPL-3+")):
        for path in sorted(folder.glob("*.ogg")):
            yield RawClip(
                id=f"{pkg.split('-')[0]}-music/{path.stem}",
                source=pkg,
                origin=path.name,
                data=path,
                labels=["music"],
                phrase="a piece of music",
                caption="a piece of game soundtrack music",
                caption_kind="derived",
                licence=licence,
            )


# --------------------------------------------------------------------------------------------
# Soundfonts


def sf2_presets(path: Path) -> list[tuple[int, int, str]]:
    """(bank, program, name) of every preset in a SoundFont 2 file (its ``pdta/phdr`` chunk)."""
    data = path.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise CorpusError(f"{path}: not a SoundFont 2 file")
    i = 12
    while i + 8 <= len(data):
        cid, size = data[i : i + 4], struct.unpack_from("<I", data, i + 4)[0]
        if cid == b"LIST" and data[i + 8 : i + 12] == b"pdta":
            j = i + 12
            while j + 8 <= i + 8 + size:
                sid, ssz = data[j : j + 4], struct.unpack_from("<I", data, j + 4)[0]
                if sid == b"phdr":
                    recs = [data[j + 8 + 38 * k : j + 8 + 38 * (k + 1)] for k in range(ssz // 38 - 1)]  # last is EOP
                    return sorted(
                        (struct.unpack_from("<H", r, 22)[0], struct.unpack_from("<H", r, 20)[0], r[:20].split(b"\0")[0].decode("latin-1"))
                        for r in recs
                    )
                j += 8 + ssz + (ssz & 1)
        i += 8 + size + (size & 1)
    raise CorpusError(f"{path}: no preset headers (pdta/phdr) found")


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def midi_file(notes: list[tuple[int, int, int, int]], hold_s: float = HOLD_S, slot_s: float = SLOT_S) -> bytes:
    """A one-track Standard MIDI File playing (bank, program, note, velocity) one per slot on channel 0.

    Timing: 960 ticks per second (480 per quarter at 120 bpm); note i starts at i * slot_s.
    """
    tps = 960
    events, now = bytearray(), 0
    for i, (bank, program, note, vel) in enumerate(notes):
        start = round(i * slot_s * tps)
        events += _vlq(start - now) + bytes([0xB0, 0, bank, 0, 0xC0, program, 0, 0x90, note, vel])
        events += _vlq(round(hold_s * tps)) + bytes([0x80, note, 0])
        now = start + round(hold_s * tps)
    end = round(len(notes) * slot_s * tps)
    events += _vlq(end - now) + b"\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(events)) + bytes(events)


def render_notes(sf2: Path, notes: list[tuple[int, int, int, int]], workdir: Path) -> list[bytes]:
    """Render `notes` with fluidsynth (no reverb, no chorus) and return one WAV (bytes) per note."""
    if shutil.which(FLUIDSYNTH) is None:
        raise CorpusError("fluidsynth: not found; install the Debian package fluidsynth (scripts/install.sh does)")
    mid, wav = workdir / "notes.mid", workdir / "notes.wav"
    mid.write_bytes(midi_file(notes))
    cmd = [
        FLUIDSYNTH,
        "-ni",
        "-q",
        "-R",
        "0",
        "-C",
        "0",
        "-g",
        "0.8",
        "-r",
        str(RENDER_RATE),
        "-T",
        "wav",
        "-F",
        str(wav),
        str(sf2),
        str(mid),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wav.is_file():
        raise CorpusError(f"{sf2}: fluidsynth failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    audio, sr = sf.read(wav, dtype="int16", always_2d=True)
    slot = int(round(SLOT_S * sr))
    out = []
    for i in range(len(notes)):
        buf = io.BytesIO()
        sf.write(buf, audio[i * slot : (i + 1) * slot], sr, format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _note_name(n: int) -> str:
    return f"{NOTE_NAMES[n % 12]}{n // 12 - 1}"


def iter_instruments(sf2: Path = FLUID_SF2, per_class: int = NOTES_PER_CLASS) -> Iterator[RawClip]:
    """`per_class` notes per instrument class of the FluidR3 GM soundfont (MIT), rendered by fluidsynth.

    Presets are grouped by `classes.classify_instrument`; a class's notes cycle over its presets and
    spread evenly over its range. Presets no rule claims come out as one unlabelled entry each.
    """
    by_class: dict[str, list[tuple[int, int, str]]] = {}
    for bank, program, name in sf2_presets(sf2):
        if bank >= 128:  # drum kits: the drum classes come from the avldrums kits
            continue
        hit = C.classify_instrument(name)
        if hit is None:
            yield RawClip(
                id=f"fluid/preset-{bank}-{program}",
                source="fluid-soundfont-gm (rendered by fluidsynth)",
                origin=f"{sf2.name} bank {bank} program {program} ({name})",
                data=b"",
                labels=[],
                phrase=name,
                caption=name,
                caption_kind="derived",
                licence="MIT",
            )
            continue
        by_class.setdefault(hit[0], []).append((bank, program, name))
    with tempfile.TemporaryDirectory() as tmp:
        for cls, presets in sorted(by_class.items()):
            _, phrase, lo, hi = C.classify_instrument(presets[0][2]) or ("", "", 0, 0)
            plan = []
            for k in range(per_class):
                bank, program, name = presets[k % len(presets)]
                note = lo + round(k * (hi - lo) / max(1, per_class - 1))
                plan.append((bank, program, note, VELOCITIES[(k // len(presets)) % len(VELOCITIES)], name))
            wavs = render_notes(sf2, [p[:4] for p in plan], Path(tmp))
            slug = cls.replace(" ", "_")
            for k, ((bank, program, note, vel, name), wav) in enumerate(zip(plan, wavs)):
                yield RawClip(
                    id=f"fluid/{slug}/{k:02d}_{program}_{note}",
                    source="fluid-soundfont-gm (rendered by fluidsynth)",
                    origin=f"{sf2.name} bank {bank} program {program} ({name}) note {note} velocity {vel}",
                    data=wav,
                    labels=[cls],
                    phrase=f"{phrase} playing {_note_name(note)}",
                    caption=f"{phrase} playing the note {_note_name(note)}",
                    caption_kind="derived",
                    licence="MIT",
                )


def iter_drums(kits: tuple[Path, ...] = AVLDRUMS_SF2, per_class: int = NOTES_PER_CLASS) -> Iterator[RawClip]:
    """Drum hits of the avldrums kits (GPL-2+), rendered by fluidsynth: `per_class` hits per drum class,
    cycling over kits, the class's General MIDI keys and velocities."""
    keys: dict[str, list[int]] = {}
    for note, (cls, _) in sorted(C.DRUM_NOTES.items()):
        keys.setdefault(cls, []).append(note)
    vels = [20 + round(i * 107 / (per_class - 1)) for i in range(per_class)]  # soft to hard: every velocity layer
    with tempfile.TemporaryDirectory() as tmp:
        for ki, kit in enumerate(kits):
            bank, program, kit_name = sf2_presets(kit)[0]
            plan = [
                (cls, notes[k % len(notes)], vels[(k * len(kits) + ki) % per_class])
                for cls, notes in sorted(keys.items())
                for k in range(per_class // len(kits))
            ]
            wavs = render_notes(kit, [(bank, program, n, v) for _, n, v in plan], Path(tmp))
            for k, ((cls, note, vel), wav) in enumerate(zip(plan, wavs)):
                phrase = C.DRUM_NOTES[note][1]
                yield RawClip(
                    id=f"avldrums/{kit.stem}/{cls.replace(' ', '_')}_{k:03d}_{note}_{vel}",
                    source="avldrums.lv2-soundfont (rendered by fluidsynth)",
                    origin=f"{kit.name} ({kit_name}) note {note} velocity {vel}",
                    data=wav,
                    labels=[cls, "drums"],
                    phrase=phrase,
                    caption=f"{phrase} ({kit_name.replace('_', ' ')} drum kit)",
                    caption_kind="derived",
                    licence="GPL-2+",
                )


def iter_more() -> Iterator[RawClip]:
    """All sources of this module, in a fixed order."""
    for lang in ASTERISK_LANGS:
        yield from iter_asterisk_lang(lang)
    yield from iter_fillets()
    yield from iter_music()
    yield from iter_instruments()
    yield from iter_drums()
