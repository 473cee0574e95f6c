"""`sam train`, `sam eval`, `sam caption`, `sam ask`: thin wrappers over training, evaluation and generation."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sam.cli.common import config_from, load_model
from sam.cli.support import check_writable
from sam.config import ConfigError, load_yaml


def cmd_train(args: argparse.Namespace) -> int:
    from sam.train.runs import train_or_load

    exp = config_from(args.config, "", args.overrides)
    run_dir = train_or_load(exp, args.runs_dir, device=args.device, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per torchrun process
        print(run_dir)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sam.data import build_examples
    from sam.eval import default_audio_loader, evaluate_examples

    out = check_writable(args.out or (Path(args.run) / f"eval-{args.split}" if args.run else f"eval-{args.split}"), "--out", directory=True)
    model, exp = load_model(args)
    if args.config:
        exp = load_yaml(args.config)
    if exp is None:
        raise ConfigError("--checkpoint needs --config for the data settings (a --run knows its own)")
    examples = build_examples(exp.data, args.split, list(args.tasks))
    if args.limit:
        examples = examples[: args.limit]
    metrics, predictions = evaluate_examples(
        model,
        examples,
        batch_size=exp.train.eval_batch_size,
        max_new_tokens=exp.train.max_new_tokens,
        audio_loader=default_audio_loader(exp.data.root, exp.model.audio.sample_rate),
        config=exp.eval,
        progress=True,
    )
    from sam.checkpoint import atomic_write_bytes  # a write error names the file

    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2, default=str).encode())
    predictions.to_csv(out / "predictions.csv", index=False)
    print(json.dumps(metrics, indent=2, default=str))
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.csv'}")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from sam.cli.infer import answer_files, check_request, one_line

    check_request(args.instruction, args.max_new_tokens, "--instruction", args.batch_size)
    model, _ = load_model(args)
    bad = 0
    for name, text in answer_files(model, args.audio, args.instruction, args.max_new_tokens, args.batch_size):
        if text is None:
            bad += 1
        else:  # one line per file, whatever the model wrote
            print(f"{one_line(name)}\t{one_line(text)}", flush=True)
    return 1 if bad else 0


def cmd_ask(args: argparse.Namespace) -> int:
    from sam.cli.infer import answer_files, check_request, one_line

    check_request(args.question, args.max_new_tokens, "question")
    model, _ = load_model(args)
    ((_, text),) = answer_files(model, [args.audio], args.question, args.max_new_tokens, 1)
    if text is None:
        return 1
    print(one_line(text))
    return 0
