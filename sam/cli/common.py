"""What several subcommands share: the config a command runs, its device, the model it loads, audio files, sites, spans."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sam.config import ConfigError, ExperimentConfig, apply_overrides, load_yaml, preset


def config_from(path: str | None, name: str, overrides: list[str]) -> ExperimentConfig:
    cfg = load_yaml(path) if path else preset(name)
    return apply_overrides(cfg, overrides)


def device_for(requested: str | None) -> str:
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(args: argparse.Namespace) -> tuple[Any, ExperimentConfig | None]:
    if args.run:
        from sam.train.runs import load_run

        model, exp = load_run(args.run, device_for(args.device))
        return model.eval(), exp
    from sam.model import SAM

    if not (Path(args.checkpoint) / "config.json").is_file():
        raise ConfigError(f"--checkpoint {args.checkpoint}: not a SAM checkpoint directory (no config.json)")
    model = SAM.from_pretrained(args.checkpoint)
    if model.tokenizer is None:
        raise ConfigError(
            f"--checkpoint {args.checkpoint}: no tokenizer.json there (a SAM checkpoint keeps its tokenizer beside its weights)"
        )
    return model.to(device_for(args.device)).eval(), None


def load_waves(paths: list[str], sample_rate: int) -> tuple[list[Any], list[str], int]:
    from sam.model.audio import AudioError, load_audio

    waves, names, bad = [], [], 0
    for path in paths:
        try:
            waves.append(load_audio(path, sample_rate))
            names.append(path)
        except AudioError as e:
            print(f"sam: skipped {e}", file=sys.stderr)
            bad += 1
    return waves, names, bad


def expand_sites_or_fail(patterns: list[str], available: list[str]) -> list[str]:
    from probes import expand_sites

    try:
        return expand_sites(patterns, available)
    except KeyError as e:
        raise ConfigError(f"--sites {e.args[0]}") from None


def parse_span(span: str | None) -> tuple[int, int] | None:
    if span is None:
        return None
    try:
        start, end = (int(v) for v in span.split(":"))
    except ValueError:
        raise ConfigError(f"--span {span!r}: expected START:END token positions, e.g. 4:60") from None
    if not 0 <= start < end:
        raise ConfigError(f"--span {span!r}: needs 0 <= START < END")
    return start, end
