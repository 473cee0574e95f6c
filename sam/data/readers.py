"""Readers for real public datasets in their own formats, from local paths, into `Example`s.

OpenAQA (LTU's instruction JSON), AudioSet segment CSVs + class_labels_indices.csv, AudioCaps CSV,
Clotho caption (+ metadata) CSVs, ESC-50 meta CSV, and MMAU JSON (test-mini and our own exports via
`write_mmau_json`). Every reader returns ``(examples, report)``: rows with missing fields, unknown
labels or missing audio files are skipped and listed in the `ReadReport` with their row number
(the physical line in a CSV, header = line 1; the 0-based item index in a JSON list).

Readers never download, never guess labels, and never stop at a bad row; only an unreadable file
(absent, wrong header, not JSON) raises `DatasetError`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sam.data.questions import CLASSIFICATION_QUESTION, mcq_instruction
from sam.data.read_support import (
    BadRow,
    DatasetError,
    ReadReport,
    Skip,
    collect,
    csv_rows,
    find_audio,
    need_fields,
    open_text,
    physical_rows,
    row_problem,
)
from sam.data.types import Example

__all__ = ["DatasetError", "ReadReport"]  # re-exported: they live in sam.data.read_support

CAPTION_INSTRUCTION = "Write a caption for this audio."


# --------------------------------------------------------------------------------------------
# OpenAQA (LTU)

_LTU_TASKS = {"open-ended question": "open", "closed-ended question": "closed"}


def read_openaqa(path: str | Path, audio_dir: str | Path | None = None, check_audio: bool = True) -> tuple[list[Example], ReadReport]:
    """LTU/OpenAQA JSON: a list of {instruction, input, audio_id, dataset, task, output}.

    `audio_dir` re-roots audio paths (LTU's absolute paths rarely exist locally: the file name is
    looked up in `audio_dir`). LTU task names map to ours: cla_* -> classification, caption* ->
    caption, open-ended -> open, anything else closed; cla_label answers also give the labels.
    """
    report = ReadReport(str(path))
    items = _json_list(path)
    base = Path(audio_dir) if audio_dir else None

    def make(i: int, item: Any) -> list[Example]:
        if not isinstance(item, dict):
            raise Skip("not a JSON object")
        instruction, audio_id, output = need_fields(item, "instruction", "audio_id", "output")
        ltu_task = str(item.get("task", ""))
        task = (
            "classification"
            if ltu_task.startswith("cla")
            else "caption"
            if ltu_task.startswith("caption")
            else _LTU_TASKS.get(ltu_task, "closed")
        )
        cands = [Path(audio_id)] + ([base / Path(audio_id).name, base / audio_id.lstrip("./")] if base else [])
        audio = find_audio(report, i, cands, check_audio)
        meta = {"dataset": item.get("dataset", ""), "ltu_task": ltu_task, "input": item.get("input", ""), "row": i}
        # Keys LTU does not have, written by `write_openaqa_json`: labels, choices, references.
        labels = _strings(item, "labels")
        if labels is None:  # LTU's cla_label answers are comma-separated class names: the labels mAP and stage 0 use
            labels = [x.strip() for x in output.split(",") if x.strip()] if ltu_task == "cla_label" else []
        choices = _strings(item, "choices")
        if choices is not None:
            if output not in choices:
                raise Skip(f"output {output!r} is not one of the choices")
            task = "reasoning"
        references = _strings(item, "references")
        if references is not None:
            meta["references"] = references
        return [Example(str(item.get("id") or f"openaqa-{i}"), audio, instruction, output, task, labels, choices, meta)]

    return collect(report, enumerate(items), make), report


def _strings(item: dict[str, Any], key: str) -> list[str] | None:
    """item[key] as a list of strings, None when absent; anything else skips the row."""
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Skip(f"{key} must be a list of strings")
    return list(value)


# Our task -> LTU's task name (what `read_openaqa` maps back).
_TO_LTU = {
    "classification": "cla_label",
    "caption": "caption",
    "open": "open-ended question",
    "closed": "closed-ended question",
    "reasoning": "multiple-choice question",
}


def write_openaqa_json(examples: Iterable[Example], path: str | Path, dataset: str = "") -> int:
    """Write file-audio examples (any reader's) as LTU/OpenAQA-format JSON; returns how many.

    Each item has LTU's keys (instruction, input, audio_id, dataset, task, output) plus what LTU's
    format cannot say otherwise: ``id``, ``labels`` (classification), ``choices`` (multiple choice)
    and ``references`` (all captions of a clip). `read_openaqa` reads them back, so any dataset a
    reader knows can become ``data.json_train`` or ``data.json_test``. Scene specs (composed audio)
    have no file to point at and raise; write them with `write_mmau_json(..., audio_dir=...)`."""
    items = []
    for ex in examples:
        if not isinstance(ex.audio, str):
            raise ValueError(f"example {ex.id}: its audio is a composed scene, not a file; render it first")
        item: dict[str, Any] = {
            "id": ex.id,
            "instruction": ex.instruction,
            "input": "",
            "audio_id": str(Path(ex.audio).resolve()),
            "dataset": dataset or str(ex.metadata.get("dataset", "")),
            "task": _TO_LTU[ex.task],
            "output": ex.answer,
        }
        if ex.labels:
            item["labels"] = list(ex.labels)
        if ex.choices:
            item["choices"] = list(ex.choices)
        if ex.metadata.get("references"):
            item["references"] = [str(r) for r in ex.metadata["references"]]
        items.append(item)
    from sam.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(items, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return len(items)


def _json_list(path: str | Path) -> list[Any]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: top level must be a JSON list of items, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# AudioSet


def read_audioset_labels(path: str | Path) -> dict[str, str]:
    """class_labels_indices.csv (index, mid, display_name) -> {mid: display_name}."""
    return {row["mid"].strip(): row["display_name"].strip() for _, row in csv_rows(Path(path), {"index", "mid", "display_name"})}


def read_audioset(
    segments_csv: str | Path, labels_csv: str | Path, audio_dir: str | Path, check_audio: bool = True
) -> tuple[list[Example], ReadReport]:
    """AudioSet segment CSV (``# YTID, start_seconds, end_seconds, positive_labels`` + rows) as classification.

    Audio is looked up as ``{ytid}.wav|.flac``, ``Y{ytid}.wav|.flac`` or ``{ytid}_{start}.wav`` in `audio_dir`.
    """
    names = read_audioset_labels(labels_csv)
    path = Path(segments_csv)
    if not path.is_file():
        raise DatasetError(f"{path}: file does not exist")
    report = ReadReport(str(path))
    base = Path(audio_dir)

    def rows() -> Iterator[tuple[int, list[str] | BadRow]]:
        with open_text(path) as f:
            for first, last, fields in physical_rows(csv.reader(f, skipinitialspace=True), path):
                if fields and not fields[0].lstrip().startswith("#"):
                    why = row_problem(fields, None, first, last)  # the field count is checked per row below
                    yield first, BadRow(why) if why else fields

    def make(line: int, fields: list[str]) -> list[Example]:
        if len(fields) != 4 or not all(x.strip() for x in fields):
            raise Skip(f"expected 4 fields YTID, start_seconds, end_seconds, positive_labels; got {len(fields)}")
        ytid, start, end, mids = (x.strip() for x in fields)
        try:
            t0, t1 = float(start), float(end)
        except ValueError:
            raise Skip(f"start/end not numbers: {start!r}, {end!r}") from None
        mids_list = [m.strip() for m in mids.split(",") if m.strip()]
        unknown = [m for m in mids_list if m not in names]
        if unknown:
            raise Skip(f"unknown label(s) {unknown} (not in {Path(labels_csv).name})")
        stems = [ytid, f"Y{ytid}", f"{ytid}_{int(t0)}", f"{ytid}_{t0:.3f}"]
        audio = find_audio(report, line, [base / f"{s}{ext}" for s in stems for ext in (".wav", ".flac")], check_audio)
        labels = [names[m] for m in mids_list]
        return [
            Example(
                f"audioset-{ytid}-{int(t0)}",
                audio,
                CLASSIFICATION_QUESTION,
                ", ".join(labels),
                "classification",
                labels,
                None,
                {"ytid": ytid, "start": t0, "end": t1, "mids": mids_list, "row": line},
            )
        ]

    return collect(report, rows(), make), report


# --------------------------------------------------------------------------------------------
# AudioCaps, Clotho, ESC-50


def read_audiocaps(path: str | Path, audio_dir: str | Path, check_audio: bool = True) -> tuple[list[Example], ReadReport]:
    """AudioCaps CSV (audiocap_id, youtube_id, start_time, caption): one caption example per row."""
    report = ReadReport(str(path))
    base = Path(audio_dir)

    def make(line: int, row: dict[str, str]) -> list[Example]:
        cap_id, yt, start, cap = need_fields(row, "audiocap_id", "youtube_id", "start_time", "caption")
        try:
            t0 = float(start)
        except ValueError:
            raise Skip(f"start_time not a number: {start!r}") from None
        stems = [cap_id, yt, f"Y{yt}", f"{yt}_{int(t0)}"]
        audio = find_audio(report, line, [base / f"{s}{ext}" for s in stems for ext in (".wav", ".flac")], check_audio)
        return [
            Example(
                f"audiocaps-{cap_id}",
                audio,
                CAPTION_INSTRUCTION,
                cap,
                "caption",
                [],
                None,
                {"youtube_id": yt, "start_time": t0, "row": line},
            )
        ]

    return collect(report, csv_rows(Path(path), {"audiocap_id", "youtube_id", "start_time", "caption"}), make), report


def read_clotho(
    captions_csv: str | Path, audio_dir: str | Path, metadata_csv: str | Path | None = None, check_audio: bool = True
) -> tuple[list[Example], ReadReport]:
    """Clotho captions CSV (file_name, caption_1..caption_5): five caption examples per clip, each
    carrying all five as ``metadata['references']``; keywords come from the metadata CSV if given."""
    report = ReadReport(str(captions_csv))
    base = Path(audio_dir)
    meta: dict[str, dict[str, str]] = {}
    if metadata_csv is not None:
        meta = {r["file_name"].strip(): r for _, r in csv_rows(Path(metadata_csv), {"file_name"})}
    cap_cols = [f"caption_{k}" for k in range(1, 6)]

    def make(line: int, row: dict[str, str]) -> list[Example]:
        (name,) = need_fields(row, "file_name")
        caps = need_fields(row, *cap_cols)
        audio = find_audio(report, line, [base / name], check_audio)
        extra = {k: v for k, v in meta.get(name, {}).items() if k != "file_name"}
        return [
            Example(
                f"clotho-{Path(name).stem}-{k}",
                audio,
                CAPTION_INSTRUCTION,
                c,
                "caption",
                [],
                None,
                {"file_name": name, "references": caps, "row": line, **extra},
            )
            for k, c in enumerate(caps)
        ]

    return collect(report, csv_rows(Path(captions_csv), {"file_name", *cap_cols}), make), report


def read_esc50(meta_csv: str | Path, audio_dir: str | Path, check_audio: bool = True) -> tuple[list[Example], ReadReport]:
    """ESC-50 meta/esc50.csv (filename, fold, target, category, esc10, src_file, take) as classification.

    A row whose (target, category) pair contradicts an earlier row is skipped (an unknown /
    inconsistent label), as is a target outside 0..49 or a fold outside 1..5.
    """
    report = ReadReport(str(meta_csv))
    base = Path(audio_dir)
    seen: dict[int, str] = {}
    seen_target: dict[str, int] = {}

    def make(line: int, row: dict[str, str]) -> list[Example]:
        name, fold, target, category = need_fields(row, "filename", "fold", "target", "category")
        if not (target.isdigit() and 0 <= int(target) < 50):
            raise Skip(f"target {target!r} is not a class number 0..49")
        if not (fold.isdigit() and 1 <= int(fold) <= 5):
            raise Skip(f"fold {fold!r} is not 1..5")
        if seen.setdefault(int(target), category) != category:
            raise Skip(f"unknown label: category {category!r} for target {target}, which is {seen[int(target)]!r}")
        if seen_target.setdefault(category, int(target)) != int(target):
            raise Skip(f"unknown label: target {target} for category {category!r}, which is {seen_target[category]}")
        audio = find_audio(report, line, [base / name], check_audio)
        label = category.replace("_", " ")
        return [
            Example(
                f"esc50-{Path(name).stem}",
                audio,
                CLASSIFICATION_QUESTION,
                label,
                "classification",
                [label],
                None,
                {"fold": int(fold), "target": int(target), "esc10": row.get("esc10", ""), "row": line},
            )
        ]

    return collect(report, csv_rows(Path(meta_csv), {"filename", "fold", "target", "category"}), make), report


# --------------------------------------------------------------------------------------------
# MMAU


def read_mmau(
    path: str | Path, audio_dir: str | Path | None = None, check_audio: bool = True, task: str | None = None
) -> tuple[list[Example], ReadReport]:
    """MMAU JSON (id, audio_id, question, choices, answer, task, category, sub-category, difficulty...).

    `audio_dir` is where ``audio_id`` paths are relative to (default: the JSON's folder). Items
    exported by `write_mmau_json` with a ``scene`` spec use that spec as audio. `task` keeps only
    items of that MMAU task (sound | music | speech). Answers must be one of the choices.
    """
    report = ReadReport(str(path))
    items = _json_list(path)
    base = Path(audio_dir) if audio_dir else Path(path).parent
    seen: dict[str, tuple[int, Any]] = {}

    def make(i: int, item: Any) -> list[Example]:
        if not isinstance(item, dict):
            raise Skip("not a JSON object")
        qid, question, choices, _ = need_fields(item, "id", "question", "choices", "answer")
        answer = item["answer"]  # verbatim: some test-mini choices keep a leading space
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise Skip("choices must be a list of >= 2 strings")
        if answer not in choices:
            raise Skip(f"answer {answer!r} is not one of the choices")
        if task and item.get("task") != task:
            return []
        if str(qid) in seen:  # one id, one question: a second copy would be scored twice or contradict the first
            first, first_answer = seen[str(qid)]
            differs = "with a different answer " if first_answer != answer else ""
            raise Skip(f"duplicate id {qid!r} {differs}(first at item {first})")
        seen[str(qid)] = (i, answer)
        if isinstance(item.get("scene"), dict):
            audio: str | dict = item["scene"]
        else:
            (audio_id,) = need_fields(item, "audio_id")
            audio = find_audio(report, i, [base / audio_id.removeprefix("./")], check_audio)
        category = item.get("category", "")
        category = category[0] if isinstance(category, list) and category else category  # a few test-mini items hold a list
        meta = {k: v for k, v in item.items() if k not in ("question", "choices", "answer", "scene")}
        meta.update(question=question, category=category, row=i)
        return [Example(str(qid), audio, mcq_instruction(question, choices), answer, "reasoning", [], list(choices), meta)]

    return collect(report, enumerate(items), make), report


def write_mmau_json(
    examples: Iterable[Example], path: str | Path, audio_dir: str | Path | None = None, corpus_root: str | Path = "data"
) -> int:
    """Write multiple-choice examples in MMAU's JSON shape; returns how many were written.

    Scene audio is rendered to ``audio_dir/<id>.wav`` (``audio_id`` relative to the JSON's folder)
    when `audio_dir` is given, else the spec is kept under a ``scene`` key that `read_mmau` uses.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = []
    for ex in examples:
        if not ex.choices:
            continue
        m = ex.metadata
        audio_id = ex.audio if isinstance(ex.audio, str) else f"./scenes/{ex.id}.wav"
        item: dict[str, Any] = {
            "id": ex.id,
            "audio_id": audio_id,
            "question": m.get("question", ex.instruction),
            "choices": list(ex.choices),
            "answer": ex.answer,
            "dataset": m.get("dataset", "sam-scenes"),
            "task": m.get("mmau_task", m.get("task", "sound")),
            "split": ex.audio.get("split", "") if isinstance(ex.audio, dict) else m.get("split", ""),
            "category": m.get("category", "Reasoning"),
            "sub-category": m.get("sub-category", ""),
            "difficulty": m.get("difficulty", "medium"),
        }
        if isinstance(ex.audio, dict):
            if audio_dir is not None:
                import soundfile as sf

                from sam.data.scenes import render_scene

                wav = Path(audio_dir) / f"{ex.id}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                sf.write(wav, render_scene(ex.audio, corpus_root), ex.audio["sample_rate"], subtype="PCM_16")
                item["audio_id"] = "./" + Path(os.path.relpath(wav, path.parent)).as_posix()
            else:
                item["scene"] = ex.audio
        items.append(item)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(items, indent=1))
    os.replace(tmp, path)
    return len(items)
