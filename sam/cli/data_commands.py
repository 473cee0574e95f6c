"""`sam prepare-data`, `sam export-corpus`, `sam data-summary`, `sam convert`: thin wrappers over `sam.data`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sam.cli.common import config_from
from sam.cli.support import check_writable
from sam.config import ConfigError


def cmd_data_summary(args: argparse.Namespace) -> int:
    import pandas as pd

    from sam.data import build_examples
    from sam.data.corpus import prepare_corpus
    from sam.data.summary import format_summary
    from sam.data.types import TASKS

    exp = config_from(args.config, args.preset, args.overrides)
    openaqa = exp.data.source == "openaqa"
    if openaqa:  # no corpus: the instruction JSON is the data
        print(
            f"instruction JSON: train/valid {exp.data.json_train or '(data.json_train not set)'}, "
            f"test {exp.data.json_test or '(data.json_test not set)'}\n"
        )
    else:
        prepare_corpus(exp.data, progress=False)
        print(format_summary(exp.data.root) + "\n")
    rows, labels = [], pd.Series(dtype=int)
    for split in ("train", "valid", "test"):
        if openaqa and split == "test" and not exp.data.json_test:
            continue
        examples = build_examples(exp.data, split, list(TASKS))
        counts = pd.Series([e.task for e in examples]).value_counts()
        rows.append({"split": split, "examples": len(examples), **{t: int(counts.get(t, 0)) for t in TASKS}})
        if split == "train":
            labels = pd.Series([label for e in examples if e.task == "classification" for label in e.labels]).value_counts()
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"\n{len(labels)} classes in train; most frequent:")
    print(labels.head(15).rename("clips").to_markdown())
    return 0


def cmd_cache_features(args: argparse.Namespace) -> int:
    import os

    from sam.data import build_examples
    from sam.data.corpus import prepare_corpus
    from sam.data.dataset import cache_features
    from sam.data.types import TASKS

    exp = config_from(args.config, args.preset, args.overrides)
    if exp.data.source != "openaqa":
        prepare_corpus(exp.data, progress=False)
    examples = [ex for split in args.splits for ex in build_examples(exp.data, split, list(args.tasks or TASKS))]
    out = cache_features(examples, exp.model.audio, exp.data.root, args.workers or os.cpu_count() or 1)
    print(
        f"[features] {out['distinct']} distinct audio: {out['cached_before']} cached before, {out['written']} written, {out['failed']} failed"
    )
    return 1 if out["failed"] else 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from sam.data.corpus import prepare_corpus

    check_writable(args.root, "--root", directory=True)
    if args.from_archive:
        from sam.data.archive import import_corpus

        print(f"[corpus] restored {import_corpus(args.from_archive, args.root)} from {args.from_archive}")
    else:
        prepare_corpus(args.root)
    return 0


def cmd_export_corpus(args: argparse.Namespace) -> int:
    from sam.data.archive import export_corpus

    out = export_corpus(args.root, check_writable(args.out, "out"), codec=args.codec, level=args.level)
    print(f"[corpus] wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def read_audioset_args(args: argparse.Namespace) -> Any:
    from sam.data.readers import read_audioset

    if not args.labels:
        raise ConfigError("--labels: required for audioset (class_labels_indices.csv)")
    return read_audioset(args.input, args.labels, args.audio_dir)


def reader_for(name: str, needs_audio_dir: bool = True) -> Any:
    def read(args: argparse.Namespace) -> Any:
        from sam.data import readers

        if needs_audio_dir and not args.audio_dir:
            raise ConfigError(f"--audio-dir: required for {args.format}")
        return getattr(readers, name)(args.input, args.audio_dir)

    return read


CONVERTERS = {
    "audioset": read_audioset_args,
    "audiocaps": reader_for("read_audiocaps"),
    "clotho": reader_for("read_clotho"),
    "esc50": reader_for("read_esc50"),
    "mmau": reader_for("read_mmau", False),
    "openaqa": reader_for("read_openaqa", False),
}


def cmd_convert(args: argparse.Namespace) -> int:
    from sam.data.readers import write_openaqa_json

    if args.audio_dir and not Path(args.audio_dir).is_dir():
        raise ConfigError(f"--audio-dir: {args.audio_dir} is not a directory")
    check_writable(args.out, "--out")
    examples, report = CONVERTERS[args.format](args)
    print(str(report), file=sys.stderr)
    try:
        n = write_openaqa_json(examples, args.out, args.dataset)
    except ValueError as e:  # composed scenes (an exported MMAU JSON without audio files) have no file to name
        raise ConfigError(f"{args.input}: {e}") from None
    print(f"wrote {n} items to {args.out}")
    return 0 if n else 1
