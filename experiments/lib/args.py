"""The command line every experiment script shares, and the run configs it asks for.

The flags: `--preset`, `--out`, `--seeds`, `--runs`, the paper preset's local paths (checked up
front, all missing ones named in one message), the LM sizes, and the options of the run cache and
of parallel measurement. `Settings` is what one invocation was asked to do.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sam.config import ExperimentConfig, apply_overrides, config_hash, preset

from . import paper_numbers, stats

REPO = Path(__file__).resolve().parents[2]
PRESETS = ("smoke", "cpu", "gpu", "paper")
DEFAULT_SEEDS = stats.FIXED_SEEDS  # fixed per preset: verdicts are computed from this count only

# The paper preset's local inputs: flag -> (what it is, "file" or "dir").
PAPER_INPUTS: dict[str, tuple[str, str]] = {
    "openaqa": ("OpenAQA training JSON (LTU format)", "file"),
    "openaqa_audio": ("folder holding OpenAQA's audio files (looked up by file name)", "dir"),
    "audioset": ("AudioSet folder: eval_segments.csv, class_labels_indices.csv, audio/", "dir"),
    "audiocaps": ("AudioCaps folder: test.csv, audio/", "dir"),
    "mmau": ("MMAU test-mini JSON", "file"),
    "eat_checkpoint": ("EAT-base checkpoint file or folder", "any"),
    "mamba_checkpoints": ("folder holding state-spaces mamba2-130m, mamba2-780m, mamba2-2.7b", "dir"),
    "tokenizer": ("GPT-NeoX tokenizer folder (tokenizer.json)", "dir"),
    "clap": ("CLAP text tower folder for classification scoring", "dir"),
}


@dataclass
class Settings:
    """What one invocation of a script was asked to do."""

    name: str
    preset: str
    out: Path
    seeds: list[int]
    runs: Path
    overrides: list[str]
    paths: dict[str, Path | None]
    argv: list[str]
    sizes: list[str] | None = None  # LM sizes to run (None: every size of the preset)
    defer_scoring: bool = False  # generate and cache answers and probe rows, score nowhere, write no outputs
    cached: str | None = None  # assemble from the run cache's records of runs trained on this device kind
    train_procs: int = 1  # torchrun processes that train each missing run (DDP; one per GPU on CUDA)
    probe_runs: Path | None = None  # with `cached`: read probe rows from this run cache instead of `runs`
    parallel_runs: int = 1  # missing runs trained this many at a time, each in its own process (one GPU each)
    # (I, N): this process is measurement worker I of N that --parallel-runs launched: it generates and
    # probes only the uncached items whose cache key falls in its share, scores nothing, writes nothing.
    measure_shard: tuple[int, int] | None = None
    # Filled by `cache`: the origin (device + versions, as JSON) of each cached measurement an output
    # is built from; `provenance` lists them, so an output assembled elsewhere says where it was measured.
    measured_on: set[str] = field(default_factory=set)
    # Filled by `cache`: measurements made on another training of a stage than the run record read
    # here describes (the same config trained twice); the Markdown and provenance list them.
    other_trainings: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)


def default_preset() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def parse_args(name: str, description: str, needs: Sequence[str] = (), argv: Sequence[str] | None = None) -> Settings:
    """Parse the common flags. With ``--preset paper`` every input in `needs` must exist, else exit
    with one message listing all that are missing."""
    p = argparse.ArgumentParser(prog=f"{name}.py", description=description.strip().splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default=None, help="smoke | cpu | gpu | paper (default: gpu with CUDA, else cpu)")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: figures/ for the cpu preset, figures/<preset>/ for the others)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="training seeds 0..N-1 (default: the preset's fixed count, 1 smoke/paper, 3 cpu/gpu; verdicts are only computed from that count)",
    )
    p.add_argument("--runs", type=Path, default=REPO / "runs", help="trained-run cache shared by all scripts (default: runs/)")
    p.add_argument(
        "--sizes",
        default=None,
        metavar="SIZE[,SIZE...]",
        help="LM sizes to run, a subset of the preset's (default: all of them, e.g. small,medium,large)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to every run, e.g. --set train.stages.0.steps=50",
    )
    p.add_argument(
        "--defer-scoring",
        action="store_true",
        help="train, generate and probe (all cached under --runs), but score no generated text and write no "
        "outputs: for a GPU machine without the text scorers (MiniLM, Java); finish with --cached",
    )
    p.add_argument(
        "--cached",
        choices=("cpu", "cuda"),
        default=None,
        metavar="DEVICE",
        help="build the outputs from the run cache's records of runs trained on DEVICE (cpu | cuda) and their "
        "cached answers and probe rows: never trains, never loads weights, scores cached answers; "
        "see experiments/export_measurements.py",
    )
    p.add_argument(
        "--train-procs",
        type=int,
        default=1,
        metavar="N",
        help="train each missing run with torchrun over N processes (one per GPU on CUDA, gloo on CPU; DDP "
        "matches one process at the same global batch), then measure it in this process",
    )
    p.add_argument(
        "--parallel-runs",
        type=int,
        default=1,
        metavar="N",
        help="train the runs the cache lacks N at a time, each by `sam train` in its own process (one GPU "
        "each on CUDA, the CPU cores split between them on CPU), then generate and probe in N processes "
        "likewise (each its share of the items, --measure-shard), and score and write in this one",
    )
    p.add_argument(
        "--probe-runs",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --cached: read the probe rows from this run cache instead of --runs, for probes measured "
        "on a second training of the same configs (the outputs say so); answers still come from --runs",
    )
    p.add_argument(
        "--measure-shard",
        default=None,
        metavar="I/N",
        help="with --defer-scoring: generate and probe only the uncached items of share I of N (0-based); "
        "--parallel-runs N launches these workers itself, one per GPU, after training",
    )
    for key, (what, _) in PAPER_INPUTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=Path, default=None, help=f"paper preset: {what}")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    args.preset = args.preset or default_preset()
    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[args.preset]
    if seeds < 1:
        p.error(f"--seeds must be at least 1, got {seeds}")
    paths = {k: getattr(args, k) for k in PAPER_INPUTS}
    sizes = None
    if args.sizes is not None:
        known = preset_sizes(args.preset)
        sizes = [z.strip() for z in args.sizes.split(",") if z.strip()]
        bad = [z for z in sizes if z not in known]
        if bad or not sizes:
            p.error(
                f"--sizes {args.sizes!r}: the {args.preset} preset has LM sizes {', '.join(known)}"
                + (f"; unknown: {', '.join(bad)}" if bad else "")
            )
        sizes = [z for z in known if z in sizes]  # the preset's order, smallest first
    if args.train_procs < 1:
        p.error(f"--train-procs must be at least 1, got {args.train_procs}")
    if args.defer_scoring and args.cached:
        p.error("--defer-scoring measures, --cached assembles what was measured: use one of them")
    if args.parallel_runs < 1:
        p.error(f"--parallel-runs must be at least 1, got {args.parallel_runs}")
    if args.parallel_runs > 1 and (args.train_procs > 1 or args.cached):
        p.error("--parallel-runs trains several runs at once, one process each: not with --train-procs or --cached")
    shard = None
    if args.measure_shard is not None:
        try:
            i, n = (int(v) for v in args.measure_shard.split("/"))
        except ValueError:
            i, n = -1, 0
        if not 0 <= i < n:
            p.error(f"--measure-shard {args.measure_shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        if not args.defer_scoring:
            p.error("--measure-shard measures a share of the items and writes nothing: use it with --defer-scoring")
        shard = (i, n)
    if args.probe_runs is not None and not args.cached:
        p.error("--probe-runs assembles probe rows measured elsewhere: use it with --cached")
    if args.preset == "paper":
        missing = missing_paper_inputs(paths, needs)
        if missing:
            p.error(f"the paper preset of {name} needs these local inputs:\n  " + "\n  ".join(missing))
    # Each preset writes its own folder, so a quick smoke run never overwrites the committed cpu results.
    out = args.out if args.out is not None else REPO / "figures" / ("" if args.preset == "cpu" else args.preset)
    return Settings(
        name,
        args.preset,
        out,
        list(range(seeds)),
        args.runs,
        args.overrides,
        paths,
        [Path(sys.argv[0]).name if argv is None else f"{name}.py", *(sys.argv[1:] if argv is None else argv)],
        sizes,
        args.defer_scoring,
        args.cached,
        args.train_procs,
        args.probe_runs,
        args.parallel_runs,
        shard,
    )


def missing_paper_inputs(paths: dict[str, Path | None], needs: Sequence[str]) -> list[str]:
    """One line per required input that is unset or absent, naming its flag and what it should be."""
    lines = []
    for key in needs:
        what, kind = PAPER_INPUTS[key]
        flag, path = "--" + key.replace("_", "-"), paths.get(key)
        if path is None:
            lines.append(f"{flag}: not given ({what})")
        elif not path.exists() or (kind == "file" and not path.is_file()) or (kind == "dir" and not path.is_dir()):
            lines.append(f"{flag} {path}: no such {'path' if kind == 'any' else kind} ({what})")
        elif key == "mamba_checkpoints":
            lines += [
                f"{flag} {path}: lacks {path / ('mamba2-' + n)}/config.json"
                for n in paper_numbers.LM_PARAMS
                if not (path / f"mamba2-{n}" / "config.json").is_file()
            ]
    return lines


def sizes_in(data: pd.DataFrame) -> list[str]:
    """The LM sizes present in a tidy table, smallest first (plots rebuild from CSVs with this)."""
    from sam.config import PAPER_LM_NAMES

    return [z for z in PAPER_LM_NAMES if z in set(data.lm_size)]


def preset_sizes(preset_name: str) -> list[str]:
    """Every LM size a preset defines, smallest first (smoke has one; the others stand in for
    130M / 780M / 2.7B)."""
    from sam.config import LM_SIZES, PAPER_LM_NAMES

    return list(LM_SIZES.get(preset_name, PAPER_LM_NAMES))


def lm_sizes(s: Settings) -> list[str]:
    """The LM sizes to run: `--sizes`, else every size the preset defines."""
    return list(s.sizes) if s.sizes is not None else preset_sizes(s.preset)


def run_config(s: Settings, lm_size: str = "small", seed: int = 0, changes: Sequence[str] = ()) -> ExperimentConfig:
    """The config of one trained run: the preset at `lm_size`, this seed, the script's `changes`
    (dotted ``key=value``) and then the user's ``--set`` overrides."""
    cfg = preset(s.preset, lm_size)
    cfg.train.seed = seed
    if s.preset == "paper":
        from sam.config import PAPER_LM_NAMES

        cfg.model.encoder.checkpoint = str(s.paths["eat_checkpoint"] or "")
        if s.paths["mamba_checkpoints"] is not None:
            cfg.model.lm_checkpoint = str(s.paths["mamba_checkpoints"] / f"mamba2-{PAPER_LM_NAMES[lm_size]}")
        cfg.model.tokenizer = str(s.paths["tokenizer"] or "")
        cfg.eval.text_encoder_path = str(s.paths["clap"] or "")
        cfg.data.source, cfg.data.json_train = "openaqa", str(s.paths["openaqa"] or "")
        cfg.data.audio_dir = str(s.paths["openaqa_audio"] or "")
        if any(s.paths[k] is not None for k in PAPER_TEST_SETS):
            cfg.data.json_test = str(paper_test_json(s))
    return apply_overrides(cfg, [*changes, *s.overrides])


def test_data(s: Settings) -> str:
    """What the outputs' numbers were measured on, for their Markdown."""
    if s.preset != "paper":
        return "the embedded corpus' test scenes"
    return ", ".join(name for k, name in PAPER_TEST_SETS.items() if s.paths.get(k) is not None) or "no test set"


# The paper preset's test split: the test sets given (input -> name in the outputs); each gives one
# task (classification, captions, multiple choice), so the paper's per-dataset scores stay apart.
PAPER_TEST_SETS = {"audioset": "AudioSet eval", "audiocaps": "AudioCaps test", "mmau": "MMAU test-mini"}
# What a paper-preset script that trains needs (checked before anything trains).
PAPER_TRAINING_NEEDS = ("openaqa", "eat_checkpoint", "mamba_checkpoints", "tokenizer", "clap")


def paper_test_json(s: Settings) -> Path:
    """The paper preset's test split as one instruction JSON under the run cache, written once per
    set of inputs: AudioSet eval (classification), AudioCaps test (captions) and MMAU test-mini
    (multiple choice), whichever are given, read by `sam.data.readers` (unusable rows listed on
    stderr and skipped). ESC-50 is not part of it: one classification task would mix its 50
    classes into AudioSet's mAP."""
    from sam.data import readers

    # The files each input's reader reads (their versions key the written JSON).
    files = {
        "audioset": lambda p: [p / "eval_segments.csv", p / "class_labels_indices.csv"],
        "audiocaps": lambda p: [p / "test.csv"],
        "mmau": lambda p: [p],
    }
    given = {k: files[k](s.paths[k]) for k in PAPER_TEST_SETS if s.paths[k] is not None}
    key = config_hash({k: [[str(f.resolve()), f.stat().st_mtime_ns if f.exists() else None] for f in fs] for k, fs in given.items()})
    path = s.runs / "paper-test" / f"{key}.json"
    if path.is_file():
        return path
    examples = []
    for name, fs in given.items():
        if name == "audioset":
            got, report = readers.read_audioset(*fs, fs[0].parent / "audio")
        elif name == "audiocaps":
            got, report = readers.read_audiocaps(fs[0], fs[0].parent / "audio")
        else:
            got, report = readers.read_mmau(fs[0])
        if report.bad:
            print(str(report), file=sys.stderr, flush=True)
        examples += got
    readers.write_openaqa_json(examples, path)
    return path
