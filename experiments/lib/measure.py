"""Library calls the experiment scripts share: trained runs, stage checkpoints, evaluation, probes.

Each function is a thin composition of `sam` and `probes` calls (train_or_load, generate_predictions +
score_predictions, run_with_cache + token_measures, state_update_distance) returning tidy rows, so a
script only says what it compares. Measurements are cached under ``<runs>/evals/``, keyed by the
checkpoint and every setting that changes the numbers, so scripts that share a run (the rank-8 row of
the LoRA table is the main table's run) measure it once:

- ``<key>.generated.json``: a run's generated answers for a task set, with the device and library
  versions that made them; ``<key>.json``: their scores (``<key>.predictions.csv``: per example);
- ``<key>.rows.json``: probe rows (token rank / similarity, state-update distances) of one stage;
- ``<key>.likelihoods.json``: per-choice log-likelihoods of the reasoning questions (`choice_likelihood`).

Whether a record is read, made here, left to another worker or refused (the fresh, ``--measure-shard``,
``--defer-scoring`` and ``--cached`` modes), and the origin each record carries, are decided in `cache`; the
functions here say what they measure. Generating and scoring are separate steps so that they can happen on
different machines: a GPU machine without the text scorers runs a script with ``--defer-scoring`` (train,
generate, probe), ``export_measurements.py`` packs the records (run.json files and ``evals/``, no weights),
and any machine with the scorers builds the outputs with ``--cached cuda``, which never trains or loads a
model. This module must never invent a number: every value comes from a library call on a real
checkpoint, and failures propagate with the run they concern.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sam.config import ExperimentConfig, config_hash, to_dict

from . import cache, common
from .cache import deferred  # noqa: F401  (the scripts call measure.deferred)
from .launch import device, measure_parallel, train_distributed, train_parallel  # noqa: F401  (measure.train_parallel)
from .probing import last_layer, state_rows, token_rows  # noqa: F401  (the scripts call measure.last_layer)
from .rows import ROW_KEYS, metric_rows  # noqa: F401  (the scripts call measure.metric_rows)

TASKS_MAIN = ("classification", "caption")
PROBE_CLIPS = {"smoke": 8, "cpu": 32, "gpu": 64, "paper": 64}  # test scenes the probes run on
PROBE_CACHE_VERSION = 2  # part of the probe-row cache key: bump it when a probe's definition changes


@dataclass
class Run:
    """A trained run: its config, directory, and the labels a script compares it under."""

    cfg: ExperimentConfig
    dir: Path
    labels: dict[str, Any]


def run_device(s: common.Settings) -> str:
    """The device kind the runs were trained on: part of run directory names and of every cache key."""
    return s.cached or device()


def train(s: common.Settings, size: str, seed: int, changes: Sequence[str] = (), **labels: Any) -> Run:
    """Train (or load from the cache) the preset at `size` and `seed` with `changes` applied.
    With ``--cached`` only the run's record (run.json) must exist; nothing is trained."""
    from sam.train.runs import run_dir_for, train_or_load

    check_paper_inputs(s)
    cfg = common.run_config(s, size, seed, changes)
    if s.cached:
        run_dir = run_dir_for(cfg, s.runs, s.cached)
        if not (run_dir / "run.json").is_file():
            what = f"the {size} LM, seed {seed}" + (f", {' '.join(changes)}" if changes else "")
            raise FileNotFoundError(
                f"--cached {s.cached}: {run_dir / 'run.json'} is missing ({what}): train that run on {s.cached} and "
                f"copy its records here with experiments/export_measurements.py"
            )
    else:
        if s.train_procs > 1:
            train_distributed(cfg, s.runs, s.train_procs)
        run_dir = train_or_load(cfg, s.runs)  # bars on a terminal, timed lines in a log
    return Run(cfg, Path(run_dir), {"lm_size": size, "seed": seed, **labels})


def check_paper_inputs(s: common.Settings) -> None:
    """With the paper preset (and something to train): one error listing every missing training
    input, or the absence of all test sets, before anything trains."""
    if s.preset != "paper" or s.cached:
        return
    missing = common.missing_paper_inputs(s.paths, common.PAPER_TRAINING_NEEDS)
    if all(s.paths[k] is None for k in common.PAPER_TEST_SETS):
        missing.append("--audioset / --audiocaps / --mmau: none given (the test split: at least one)")
    if missing:
        raise FileNotFoundError("the paper preset trains from these local inputs:\n  " + "\n  ".join(missing))


def grid(s: common.Settings, variants: dict[Any, Sequence[str]] | None = None, key: str = "variant") -> list[Run]:
    """Every LM size x variant x seed, trained or loaded from the cache. `variants` maps a label
    (stored in each run's labels under `key`) to its config changes; None = the preset as is.
    With ``--parallel-runs N`` the runs the cache lacks are first trained N at a time (`train_parallel`),
    then N worker processes generate and probe what the script will read (`measure_parallel`)."""
    plan = [
        (size, name, changes, seed) for size in common.lm_sizes(s) for name, changes in (variants or {None: ()}).items() for seed in s.seeds
    ]
    if s.parallel_runs > 1 and not s.cached and s.measure_shard is None:
        check_paper_inputs(s)
        train_parallel([common.run_config(s, size, seed, changes) for size, _, changes, seed in plan], s.runs, s.parallel_runs)
        measure_parallel(s)
    return [train(s, size, seed, changes, **({key: name} if variants else {})) for size, name, changes, seed in plan]


def configs(runs: Sequence[Run]) -> dict[str, ExperimentConfig]:
    """Each run's config under a label built from its labels (for provenance)."""
    return {"/".join(f"{k}={v}" for k, v in r.labels.items()): r.cfg for r in runs}


def checkpoints(run: Run) -> list[tuple[int, str, Path]]:
    """(stage index, stage name, SAM checkpoint dir) for every stage of a run, in order."""
    info = json.loads((run.dir / "run.json").read_text())
    return [(i, st["name"], (run.dir / st["dir"] / "final").resolve()) for i, st in enumerate(info["stages"])]


def load(checkpoint: Path) -> Any:
    from sam.model import SAM

    return SAM.from_pretrained(checkpoint, device=device()).eval()


def load_stage(run: Run, name: str) -> Any:
    """The run's SAM as it was after stage `name`, composed from the shared stages of the run cache
    (after encoder pretraining: the shared encoder with this run's initial connector and LM)."""
    from sam.train.runs import stage_model

    return stage_model(run.dir, name, device=device()).eval()


def test_examples(cfg: ExperimentConfig, tasks: Sequence[str], other_audio: bool = False) -> list[Any]:
    """The test split's examples of `tasks`; with `other_audio`, each asked about another scene's audio."""
    from sam.data import build_examples
    from sam.eval.annotate import other_audio as swap

    examples = build_examples(cfg.data, "test", list(tasks))
    return swap(examples) if other_audio else examples


def predictions_path(s: common.Settings, run: Run, checkpoint: Path, tasks: Sequence[str], other_audio: bool = False) -> Path:
    """The per-example table `evaluate` writes beside its scores (prediction, correct, per-clip caption scores)."""
    return _eval_path(s, run, checkpoint, tasks, "other-audio" if other_audio else "").with_suffix(".predictions.csv")


def stage(run: Run, name: str) -> Path:
    """The checkpoint of the stage called `name` (e.g. "stage4", the end of the four-stage curriculum)."""
    found = [c for _, n, c in checkpoints(run) if n == name]
    if not found:
        raise KeyError(f"run {run.dir} has no stage {name!r}; it has {[n for _, n, _ in checkpoints(run)]}")
    return found[0]


def evaluate(
    s: common.Settings,
    run: Run,
    checkpoint: Path,
    tasks: Sequence[str] = TASKS_MAIN,
    *,
    model: Any = None,
    variant: str = "",
    other_audio: bool = False,
) -> dict[str, Any] | None:
    """Scores of the run's answers on the test split for `tasks`, each step cached (module docstring).

    `model` replaces the checkpoint's own model (e.g. one with another run's encoder): a SAM, or a
    callable returning one, called only when the answers are not cached; `variant` must then name
    that change, since it is part of the cache key. Returns None with ``--defer-scoring`` (the
    answers are then generated and cached, not scored). `other_audio`: the control, every prompt asked
    about another test scene's audio (`sam.eval.annotate.other_audio`), cached apart."""
    from sam.eval import score_predictions

    if model is not None and not variant:
        raise ValueError("evaluate: a replaced model needs a `variant` naming the change (it keys the cache)")
    cfg, variant = run.cfg, "+".join(v for v in (variant, "other-audio" if other_audio else "") if v)
    path = _eval_path(s, run, checkpoint, tasks, variant)
    generated = path.with_suffix(".generated.json")
    source = cache.Source(run.dir, checkpoint.parent.name, f"answers of {run.dir.name}")
    if path.is_file():  # already scored; its answers are absent in caches written before they were kept apart
        if generated.is_file():
            cache.note(s, json.loads(generated.read_text()), source)
        return None if s.defer_scoring else json.loads(path.read_text())
    answers = cache.slot(
        s,
        generated,
        missing=f"--cached {s.cached}: no generated answers {generated.name} for {run.dir.name} "
        f"({os.path.relpath(checkpoint, s.runs)}, tasks {sorted(tasks)}{', ' + variant if variant else ''}): "
        f"run the script with --defer-scoring where the run was trained and export its records",
    )
    if answers is None:
        return None
    examples = test_examples(cfg, tasks, other_audio)

    def generate() -> dict[str, Any]:
        return _generate(run, checkpoint, examples, model() if callable(model) and not hasattr(model, "generate") else model)

    record = answers.record(generate, source)
    if record["ids"] != [ex.id for ex in examples]:
        raise ValueError(
            f"{generated}: its answers are for other examples than the test split of {run.dir.name} "
            f"for {sorted(tasks)} ({len(record['ids'])} vs {len(examples)}): delete it to regenerate"
        )
    if s.defer_scoring:
        return None
    metrics, table = score_predictions(examples, record["predictions"], errors=record["errors"], config=cfg.eval)
    table.drop(columns=["instruction"]).to_csv(path.with_suffix(".predictions.csv"), index=False)
    cache.write_json(path, metrics)
    return metrics


def _eval_path(s: common.Settings, run: Run, checkpoint: Path, tasks: Sequence[str], variant: str) -> Path:
    """Where the scores of one evaluation are cached (its answers beside them, `.generated.json`).

    The key holds the data section as run hashes see it (`sam.config.hash_tree`: data settings added
    later are left out at their defaults), so answers cached before those settings existed stay
    found. Answers keyed with the whole data section (as briefly written after they were added) are
    found under that older key when the canonical one holds nothing."""
    from sam.config import hash_tree

    cfg = run.cfg
    parts = {
        "checkpoint": os.path.relpath(checkpoint, s.runs),
        "variant": variant,
        "tasks": sorted(tasks),
        "eval": to_dict(cfg.eval),
        "max_new_tokens": cfg.train.max_new_tokens,
        "device": run_device(s),
    }
    paths = [s.runs / "evals" / f"{config_hash({**parts, 'data': data})}.json" for data in (hash_tree(cfg)["data"], to_dict(cfg.data))]
    return next((p for p in paths if p.is_file() or p.with_suffix(".generated.json").is_file()), paths[0])


def _generate(run: Run, checkpoint: Path, examples: list[Any], model: Any) -> dict[str, Any]:
    """The generation record of `examples`: ids, answers (None where an item failed), errors."""
    from sam.eval import generate_predictions

    gen = generate_predictions(
        model if model is not None else load(checkpoint),
        examples,
        batch_size=run.cfg.train.eval_batch_size,
        max_new_tokens=run.cfg.train.max_new_tokens,
    )

    def clean(v: Any) -> str | None:  # pandas may hold a missing answer as None or NaN
        return None if v is None or v != v else str(v)

    return {
        "ids": [ex.id for ex in examples],
        "predictions": [clean(v) for v in gen["prediction"]],
        "errors": [clean(v) for v in gen["error"]],
    }


def choice_likelihood(s: common.Settings, run: Run, checkpoint: Path, other_audio: bool = False) -> dict[str, Any] | None:
    """Multiple-choice accuracy of the checkpoint by likelihood (`sam.eval.choice_likelihoods`: the
    choice it finds most probable as its response) on the test split's reasoning questions.

    `other_audio`: the control: every question is asked about the audio of the question half the
    test list away (another scene), so the accuracy left is what the question text and the answer
    priors give without listening. The per-choice log-likelihoods are cached beside the answers
    (``<key>.likelihoods.json``). They need the weights, so with ``--cached`` a run whose likelihoods
    were not measured where it was trained gives None (its outputs then say "not measured"), as does
    ``--defer-scoring``."""
    from dataclasses import replace

    import pandas as pd

    from sam.eval import choice_likelihoods, score_choice_likelihoods

    variant = "choice-likelihood" + ("-other-audio" if other_audio else "")
    likelihoods = cache.slot(s, _eval_path(s, run, checkpoint, ["reasoning"], variant).with_suffix(".likelihoods.json"))
    if likelihoods is None:
        return None
    examples = test_examples(run.cfg, ["reasoning"])
    if other_audio:
        n = len(examples)
        examples = [replace(ex, audio=examples[(i + n // 2) % n].audio) for i, ex in enumerate(examples)]
    record = likelihoods.record(
        lambda: {
            "ids": [ex.id for ex in examples],
            "rows": choice_likelihoods(load(checkpoint), examples, batch_size=run.cfg.train.eval_batch_size).to_dict("records"),
        },
        cache.Source(run.dir, checkpoint.parent.name, f"choice likelihoods of {run.dir.name}"),
    )
    if s.defer_scoring:
        return None
    if record["ids"] != [ex.id for ex in examples]:
        raise ValueError(
            f"{likelihoods.path}: its likelihoods are for other questions than the test split of {run.dir.name}: delete it to remeasure"
        )
    return score_choice_likelihoods(examples, pd.DataFrame(record["rows"]))


def probe_rows(s: common.Settings, run: Run, stage_name: str, what: str, sites: Sequence[str] = (), **labels: Any) -> list[dict]:
    """Probe rows of the run's model after stage `stage_name` on the first `PROBE_CLIPS` test scenes:
    `what` = "tokens" (`token_rows` at `sites`) or "state" (`state_rows`), cached under <runs>/evals/.
    `stage_name` UNTRAINED probes the run's config at its seed's random initialization (the control)."""
    if what not in ("tokens", "state"):
        raise ValueError(f"probe_rows: what must be 'tokens' or 'state', got {what!r}")
    clips = PROBE_CLIPS[s.preset]
    key = config_hash(
        {
            "run": run.dir.name,
            "stage": stage_name,
            "what": what,
            "sites": list(sites),
            "clips": clips,
            "device": run_device(s),
            "version": PROBE_CACHE_VERSION,
        }
    )
    runs = s.probe_runs if s.probe_runs is not None else s.runs
    if s.probe_runs is not None and not (runs / run.dir.name / "run.json").is_file():
        raise FileNotFoundError(
            f"--probe-runs {runs}: no run record {run.dir.name}/run.json there, so its probe rows "
            f"cannot belong to {run.dir.name} (export that run's records into it)"
        )
    path = runs / "evals" / f"{key}.rows.json"
    rows = cache.slot(
        s,
        path,
        missing=f"--cached {s.cached}: no {what} probe rows {path.name} for {run.dir.name} after "
        f"{stage_name}: run the script where the run was trained and export its records",
    )
    if rows is None:
        return []
    stage_dir = UNTRAINED if stage_name == UNTRAINED else stage(run, stage_name).parent.name  # the training measured

    def measure_rows() -> dict[str, Any]:
        model, batch = _probe_inputs(run, stage_name, clips)
        return {"rows": token_rows(model, batch, sites) if what == "tokens" else state_rows(model, batch)}

    record = rows.record(measure_rows, cache.Source(runs / run.dir.name, stage_dir, f"{what} probe rows of {run.dir.name}"))
    return [{**labels, **r} for r in record["rows"]]


# The last (run dir, stage, clips) probed, with its model and probe batch: Table 4 probes one stage for
# tokens and then for state updates, and loads it once. One entry, replaced by the next stage probed.
_PROBED: dict[tuple[str, str, int], tuple[Any, dict[str, Any]]] = {}


def _probe_inputs(run: Run, stage_name: str, clips: int) -> tuple[Any, dict[str, Any]]:
    """The run's model after `stage_name` and its batch of the first `clips` test scenes (probes only read them)."""
    key = (str(run.dir), stage_name, clips)
    if key not in _PROBED:
        _PROBED.clear()  # free the previous model before loading the next
        model = untrained(run) if stage_name == UNTRAINED else load_stage(run, stage_name)
        _PROBED[key] = (model, probe_batch(model, run.cfg, clips))
    return _PROBED[key]


UNTRAINED = "untrained"  # probe_rows' stage name for the random-init control


def untrained(run: Run) -> Any:
    """The run's SAM at its seed's random initialization, built as training builds it (same config)."""
    from sam.train.runs import build_model, get_tokenizer

    return build_model(run.cfg, get_tokenizer(run.cfg, run.dir.parent), torch.device(device())).eval()


def probe_batch(model: Any, cfg: ExperimentConfig, n_clips: int) -> dict[str, Any]:
    """A batch of the first `n_clips` test scenes with their classification prompts."""
    from sam.data.dataset import SAMDataset, collate

    examples = test_examples(cfg, ["classification"])[:n_clips]
    data = SAMDataset(examples, cfg.model.audio, model.tokenizer, cfg.data.root)
    batch = collate([data[i] for i in range(len(data))])
    return {k: v.to(device()) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
