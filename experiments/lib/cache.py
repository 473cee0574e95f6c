"""The measurement cache's modes, decided in one place: does this process read a record, make it, or leave it?

Every measurement (a run's generated answers, probe rows, choice likelihoods, an encoder probe) is one
JSON record under ``<runs>/evals/``, named by a hash of everything that changes its numbers (its key).
Which process makes it follows from the script's flags (`lib.args.Settings`):

- fresh (no flag): a missing record is measured here and written;
- ``--measure-shard I/N`` (a worker of ``--parallel-runs``): only the missing records whose key falls in
  share I are measured here; the others are left to the other workers (`in_shard`);
- ``--defer-scoring``: records are made as above, but nothing is scored and no output is written, since
  the text scorers may be absent where the weights are: the measurement functions return None and the
  script returns `deferred` instead of its outputs;
- ``--cached DEVICE``: records are only read (no weights here); a missing one is an error that names it,
  or, for a measurement the outputs can go without, simply absent.

`slot` answers which of these applies to one record and `Slot.record` reads, refuses or makes it. A record
made here is stamped with the device and library versions that made it (`made_on`) and, where it measures
a stage of a run, with which training of that stage it measured (`trained`: a run record and a measurement
can come from two trainings of one config, since weights are not kept between machines and GPU training is
not bit-deterministic). Each record read or made is noted in the settings (`note`), so that the outputs'
provenance and Markdown say where their measurements were made and which came from another training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common
from .launch import device


@dataclass(frozen=True)
class Source:
    """The training a record measures: the stage stored in `stage_dir` of the run whose record is
    `run_dir/run.json`. `what` names the record in the outputs where that training was another one."""

    run_dir: Path
    stage_dir: str
    what: str


@dataclass(frozen=True)
class Slot:
    """A record that this process reads, or makes where it is missing (`slot` decided it is this process's)."""

    s: common.Settings
    path: Path
    missing: str | None  # the error ``--cached`` raises for a missing record (None: `slot` left it out)

    def record(self, make: Callable[[], dict[str, Any]], source: Source | None = None) -> dict[str, Any]:
        """The record: read where it exists; with ``--cached`` and none, FileNotFoundError(`missing`);
        else `make()` (the measurement, which needs the weights) stamped with its origin and written.
        With a `source`, the record's origin is noted in the settings for the outputs (`note`)."""
        if self.path.is_file():
            record = json.loads(self.path.read_text())
        elif self.s.cached:
            raise FileNotFoundError(self.missing)
        else:
            record = {**make(), "made_on": made_on(), **({"trained": trained(source.run_dir, source.stage_dir)} if source else {})}
            write_json(self.path, record)
        if source is not None:
            note(self.s, record, source)
        return record


def slot(s: common.Settings, path: Path, missing: str | None = None) -> Slot | None:
    """How this process treats the record at `path`: None where it neither reads nor makes it, that is
    where the record is missing and either another measurement worker makes it (`in_shard`) or this
    process only assembles (``--cached``) and the outputs can go without it (`missing` None). `missing`
    is the error a ``--cached`` process raises for a missing record the outputs need."""
    if not path.is_file() and (not in_shard(s, key(path)) or (s.cached and missing is None)):
        return None
    return Slot(s, path, missing)


def key(path: Path) -> str:
    """The cache key of a record: its file name up to the first dot (``<key>.generated.json``, ``<key>.rows.json``)."""
    return path.name.split(".")[0]


def in_shard(s: common.Settings, key: str) -> bool:
    """Whether this process measures the item cached under `key` (always, unless it is a
    ``--measure-shard I/N`` worker: then the items whose key, read as a number, is I modulo N)."""
    if s.measure_shard is None:
        return True
    i, n = s.measure_shard
    return int(key, 16) % n == i


def deferred(s: common.Settings, n_runs: int) -> dict[str, Any]:
    """What a ``--defer-scoring`` run of a script returns instead of its outputs (and says so)."""
    print(
        f"[{s.name}] --defer-scoring: answers and probe rows of {n_runs} runs cached under {s.runs / 'evals'}; "
        f"nothing scored or written. Pack them with `python experiments/export_measurements.py export FILE "
        f"--runs {s.runs}`, then on a machine with the scorers run `{s.name}.py --cached {device()}` with the same flags.",
        flush=True,
    )
    return {}


def made_on() -> dict[str, Any]:
    """The device and the library versions that make a record here."""
    return {
        "device": common.device_name(),
        "versions": {k: v for k, v in common.library_versions().items() if k in ("python", "torch", "mamba-ssm", "sam-audio")},
    }


def note(s: common.Settings, record: dict[str, Any], source: Source) -> None:
    """Record in `s` (for the provenance and Markdown) where a cached measurement was made, if it
    says, and whether it was made on another training of its stage than the run record of `source`
    describes (records that name no training are taken as they are)."""
    if record.get("made_on"):
        s.measured_on.add(json.dumps(record["made_on"], sort_keys=True))
    made = record.get("trained")
    if made and trained(source.run_dir, source.stage_dir) not in (None, made):
        s.other_trainings.add(f"{source.what} ({source.stage_dir})")


def trained(run_dir: Path, stage_dir: str) -> str | None:
    """Which training of a stage a run record describes: a hash of the summary (final losses and all)
    that `run_dir/run.json` holds for the stage stored in `stage_dir`; None without one."""
    try:
        stages = json.loads((run_dir / "run.json").read_text())["stages"]
    except (OSError, KeyError, ValueError):
        return None
    summary = next((st.get("summary") for st in stages if Path(st["dir"]).name == stage_dir), None)
    if summary is None:
        return None
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:12]


def write_json(path: Path, value: Any) -> None:
    """`value` as JSON, written atomically: a killed run leaves the old file or none, never half of one."""
    from sam.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(value, default=str).encode())
