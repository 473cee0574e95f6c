"""The embedded corpus: real clips from the Debian sources, every row decodes, enough classes with enough
source clips in every split, and labels only where a rule derives them."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sam.data.corpus import (
    NO_LABEL,
    OPENSFX_CAT,
    CorpusError,
    parse_opensfx_cat,
    prepare_corpus,
    read_asterisk_transcripts,
    read_class_map,
    read_manifest,
    trim_silence,
)
from sam.data.summary import corpus_summary, format_summary
from sam.model.audio import fbank, load_audio

ROOT = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="session")
def corpus_root() -> Path:
    prepare_corpus(ROOT, progress=False)  # returns at once when `sam prepare-data` already built it
    return ROOT


def test_extraction_finds_5000_clips_and_5_hours_from_every_source(corpus_root):
    rows = read_manifest(corpus_root)
    per_source = Counter(r["source"] for r in rows)
    print("clips per source:", dict(per_source), "total", len(rows))
    assert len(rows) >= 5000 and sum(r["duration"] for r in rows) >= 5 * 3600
    assert set(per_source) == {
        "ufoai-sound",
        "openttd-opensfx",
        "sonic-pi-samples",
        "fillets-ng-data",
        "colobot-common-sounds",
        *(f"asterisk-core-sounds-{lang}" for lang in ("en", "es", "fr", "it", "ru")),
        "fluid-soundfont-gm (rendered by fluidsynth)",
        "avldrums.lv2-soundfont (rendered by fluidsynth)",
    }
    assert per_source["openttd-opensfx"] == 62  # 73 catalogue entries: 11 (two empty placeholders) no rule labels
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["licence"] and r["licence"] != "unknown" for r in rows)


def test_manifest_rows_decode_with_their_stated_duration(corpus_root):
    rows = read_manifest(corpus_root)
    for r in random.Random(0).sample(rows, 60):  # the builder decoded all of them; re-check a sample
        wave = load_audio(corpus_root / r["path"])
        assert wave.size == r["num_samples"] and abs(wave.size / 16000 - r["duration"]) < 1e-3
        assert np.abs(wave).max() > 1e-3  # not silence
        assert sf.info(corpus_root / r["path"]).samplerate == 16000


def test_48_classes_each_with_25_source_clips_and_none_in_over_a_quarter_of_clips(corpus_root):
    cmap = read_class_map(corpus_root)
    rows = read_manifest(corpus_root)
    counts = Counter(lab for r in rows for lab in r["labels"])
    print("classes:", {k: v["clips"] for k, v in cmap["classes"].items()})
    assert len(cmap["classes"]) >= 48 and cmap["min_clips"] == 25
    for name, info in cmap["classes"].items():
        assert info["clips"] == counts[name] >= 25, name
        assert counts[name] <= 0.25 * len(rows), name
    assert all(n < 25 for n in cmap["dropped"].values())


def test_every_class_has_5_source_clips_in_test_and_no_audio_is_in_two_splits(corpus_root):
    import hashlib

    from sam.data.scenes import assign_splits

    rows = read_manifest(corpus_root)
    classes = sorted(read_class_map(corpus_root)["classes"])
    split_of = assign_splits(rows, classes)
    per_split = Counter((lab, split_of[r["id"]]) for r in rows if r["id"] in split_of for lab in r["labels"])
    for name in classes:
        assert per_split[name, "test"] >= 5 and per_split[name, "valid"] >= 5, name
    # Split by source clip: identical audio (the same file shipped twice) must not sit in two splits.
    where: dict[str, str] = {}
    for r in rows:
        if r["id"] in split_of:
            digest = hashlib.sha1((corpus_root / r["path"]).read_bytes()).hexdigest()
            assert where.setdefault(digest, split_of[r["id"]]) == split_of[r["id"]], r["id"]


def test_opensfx_captions_and_asterisk_transcripts_reach_the_manifest(corpus_root):
    entries = parse_opensfx_cat(OPENSFX_CAT)
    assert len(entries) == 73 and entries[6][1].startswith('"Ship horn"') and entries[6][2][:4] == b"RIFF"
    rows = {r["id"]: r for r in read_manifest(corpus_root)}
    assert rows["opensfx/06_ship_horn"]["caption"] == "Ship horn" and rows["opensfx/06_ship_horn"]["labels"] == ["horn"]
    text = read_asterisk_transcripts()
    speech = [r for r in rows.values() if r["labels"] == ["English speech"] and r["transcript"]]
    assert len(speech) > 500
    name = speech[0]["id"].removeprefix("asterisk/")
    assert speech[0]["transcript"] == text[name]
    # Other languages: transcript from core-sounds-<lang>.txt.gz, speaker's sex from the voice folder.
    it = rows["asterisk-it/agent-loggedoff"]
    assert it["labels"] == ["Italian speech"] and it["transcript"] == "operatore disconnesso."
    assert it["phrase"].startswith("a man saying")  # it_IT_m_Carlo
    assert rows["asterisk-ru/agent-loginok"]["transcript"] == "Оператор зарегистрирован."


def test_unreadable_and_unlabelable_entries_are_reported_and_skipped(corpus_root):
    report = json.loads((corpus_root / "corpus" / "report.json").read_text())
    skipped = {s["id"]: s["reason"] for s in report["skipped"]}
    assert "silent" in skipped["asterisk/silence/1"]
    # No rule derives a label: a Czech nickname, an unused OpenSFX slot, a soundfont's sound-effect preset.
    for entry in ("fillets/barrel/en/bar-x-suckano", "opensfx/34_unused_nothing", "fluid/preset-0-122"):
        assert skipped[entry] == NO_LABEL, entry
    assert all(i not in {r["id"] for r in read_manifest(corpus_root)} for i in skipped)


def test_label_rules_read_names_and_never_guess():
    from sam.data import classes as C

    assert C.classify_instrument("Violin") == ("violin", "a violin", 55, 93)
    assert C.classify_instrument("Sea Shore") is None and C.classify_instrument("Goblin") is None
    assert C.classify_fillets("linux/key12") == (["keyboard typing"], "a key being typed on a keyboard")
    assert C.classify_fillets("barrel/bar-x-suckano")[0] == []
    assert C.classify_speech("Attivato.", "Italian", "man") == (["Italian speech"], 'a man saying "Attivato."')


def test_folder_clips_without_a_label_are_reported_and_skipped(corpus_root, tmp_path):
    rows = [r for r in read_manifest(corpus_root) if r["source"] == "sonic-pi-samples"][:4]
    (tmp_path / "audio").mkdir()
    lines = ["path,labels,caption"]
    for i, r in enumerate(rows):
        (tmp_path / "audio" / f"c{i}.wav").write_bytes((corpus_root / r["path"]).read_bytes())
        lines.append(f"c{i}.wav,{'drums' if i else ''},real clip {i}")  # the first has no label
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    prepare_corpus(tmp_path, source="folder", min_clips=3, progress=False)
    assert [r["id"] for r in read_manifest(tmp_path)] == ["folder/c1", "folder/c2", "folder/c3"]
    skipped = json.loads((tmp_path / "corpus" / "report.json").read_text())["skipped"]
    assert skipped == [{"id": "folder/c0", "origin": "labels.csv line 2", "reason": NO_LABEL}]


def test_folder_source_builds_a_corpus_and_reports_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "audio").mkdir()
    lines = ["path,labels,caption"]
    for i in range(6):
        wave = np.concatenate([np.zeros(800), 0.3 * rng.standard_normal(4000), np.zeros(400)])
        sf.write(tmp_path / "audio" / f"c{i}.wav", wave, 22050)
        lines.append(f"c{i}.wav,{'bird' if i < 3 else 'bell;music'},clip {i}")
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio")
    lines += ["broken.wav,bird,", "absent.wav,bird,"]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    prepare_corpus(tmp_path, source="folder", min_clips=3, progress=False)
    rows = read_manifest(tmp_path)
    assert len(rows) == 6 and rows[3]["labels"] == ["bell", "music"]
    assert abs(rows[0]["duration"] - 4000 / 22050) < 2e-3  # leading/trailing silence trimmed
    assert set(read_class_map(tmp_path)["classes"]) == {"bird", "bell", "music"}
    skipped = json.loads((tmp_path / "corpus" / "report.json").read_text())["skipped"]
    assert {s["id"] for s in skipped} == {"folder/broken", "folder/absent"}
    with pytest.raises(CorpusError, match="labels.csv"):
        prepare_corpus(tmp_path / "empty", source="folder", progress=False)


def test_trim_silence_keeps_the_sound_and_drops_the_edges():
    wave = np.zeros(1000, dtype=np.float32)
    wave[300:700] = 0.5
    out = trim_silence(wave)
    assert out.size == 400 and trim_silence(np.zeros(100, dtype=np.float32)).size == 0


def test_summary_reports_real_numbers(corpus_root):
    s = corpus_summary(corpus_root)
    assert s["clips"] == len(read_manifest(corpus_root)) and s["classes"] >= 48
    assert 0 < s["largest_class_share"] <= 0.25
    text = format_summary(corpus_root)
    assert "asterisk-core-sounds-en" in text and "Italian speech" in text
    from sam.data.summary import corpus_tables

    table = corpus_tables(corpus_root)["classes"]
    assert (table[["train", "valid", "test"]].sum(axis=1) == table["clips"]).all()  # every source clip in one split


def _sub_corpus(corpus_root: Path, dst: Path, every: int) -> list[dict]:
    """A complete corpus under `dst` holding every `every`-th clip of the embedded one; returns its rows."""
    rows = read_manifest(corpus_root)[::every]
    (dst / "corpus").mkdir(parents=True)
    for name in ("classes.json", "report.json"):
        (dst / "corpus" / name).write_bytes((corpus_root / "corpus" / name).read_bytes())
    for r in rows:
        (dst / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        (dst / r["path"]).write_bytes((corpus_root / r["path"]).read_bytes())
    (dst / "corpus" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_corpus_archive_round_trip_restores_identical_files_and_names_bad_members(corpus_root, tmp_path, capsys):
    from sam.cli import main
    from sam.data.archive import export_corpus, import_corpus

    src = tmp_path / "src"
    rows = _sub_corpus(corpus_root, src, 200)  # a few clips from every source keep the test fast
    archive = export_corpus(src, tmp_path / "corpus.tar", progress=False)
    assert main(["prepare-data", "--from-archive", str(archive), "--root", str(tmp_path / "dst")]) == 0
    for rel in ["corpus/manifest.jsonl", "corpus/classes.json"] + [r["path"] for r in rows]:
        assert (tmp_path / "dst" / rel).read_bytes() == (src / rel).read_bytes(), rel  # lossless, same manifest hash
    # A truncated archive names the missing member; the CLI says so in one line.
    data = archive.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=r"cut\.tar"):
        import_corpus(tmp_path / "cut.tar", tmp_path / "dst2", progress=False)
    assert not (tmp_path / "dst2" / "corpus" / "manifest.jsonl").exists()  # a failed import never looks complete
    assert main(["prepare-data", "--from-archive", str(tmp_path / "nope.tar"), "--root", str(tmp_path)]) == 1
    assert "nope.tar" in capsys.readouterr().err.strip().splitlines()[-1]


def test_opus_archive_is_small_says_it_is_lossy_and_keeps_the_manifest_and_the_sound(corpus_root, tmp_path):
    from sam.cli import main
    from sam.data.archive import export_corpus, transcoded
    from sam.data.summary import format_summary

    src = tmp_path / "src"
    rows = _sub_corpus(corpus_root, src, 400)
    flac = export_corpus(src, tmp_path / "flac.tar", progress=False)
    opus = export_corpus(src, tmp_path / "opus.tar", progress=False, codec="opus")
    import tarfile

    def clip_bytes(archive: Path) -> int:
        with tarfile.open(archive) as tar:
            return sum(m.size for m in tar.getmembers() if not m.name.endswith((".json", ".jsonl")))

    assert clip_bytes(opus) < 0.25 * clip_bytes(flac)  # the whole corpus v2: 49 vs 320 MB
    dst = tmp_path / "dst"
    assert main(["prepare-data", "--from-archive", str(opus), "--root", str(dst)]) == 0
    assert (dst / "corpus/manifest.jsonl").read_bytes() == (src / "corpus/manifest.jsonl").read_bytes()
    assert transcoded(dst)["codec"] == "opus" and transcoded(src) is None
    assert "LOSSY COPY" in format_summary(dst)
    # Same lengths, and the same sound within the codec's error: each restored clip's log-mel envelope
    # correlates with its own source better than with any other clip's (measured 0.87-1.00 vs its own).
    env = {}
    for r in rows:
        a, b = sf.read(src / r["path"])[0], sf.read(dst / r["path"])[0]
        assert a.shape == b.shape, r["path"]
        env[r["path"]] = [fbank(w.astype(np.float32)).mean(0).numpy() for w in (a, b)]
    for path, (_, restored) in env.items():
        corr = {other: np.corrcoef(restored, source)[0, 1] for other, (source, _) in env.items()}
        assert max(corr, key=corr.get) == path and corr[path] > 0.8, path
    # A lossless import over a lossy one removes the note.
    assert main(["prepare-data", "--from-archive", str(flac), "--root", str(dst)]) == 0
    assert transcoded(dst) is None


def test_soundfont_notes_render_deterministically_one_per_slot(tmp_path):
    import io

    from sam.data.sources import FLUID_SF2, SLOT_S, render_notes, sf2_presets

    assert (0, 40, "Violin") in sf2_presets(FLUID_SF2) and (128, 0, "Standard") in sf2_presets(FLUID_SF2)
    notes = [(0, 40, 67, 100), (0, 0, 60, 70)]
    first, again = render_notes(FLUID_SF2, notes, tmp_path), render_notes(FLUID_SF2, notes, tmp_path)
    assert first == again  # same bytes: the manifest (and every cache keyed on it) is reproducible
    for wav in first:
        wave, sr = sf.read(io.BytesIO(wav))
        assert wave.shape[0] == round(SLOT_S * sr) and np.abs(wave).max() > 0.01
        assert np.abs(wave[-sr // 10 :]).max() < 0.01 * np.abs(wave).max()  # the note has died out before the next slot
