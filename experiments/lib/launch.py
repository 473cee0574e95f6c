"""Processes the experiment scripts start: training under torchrun, several runs side by side (one GPU each), and
measurement workers that each take a share of the uncached items. Each launch writes a log that is kept when it fails."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sam.config import ExperimentConfig

from . import common


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_distributed(cfg: ExperimentConfig, runs: Path, procs: int) -> Path:
    """Train `cfg` into the run cache with `sam train` under torchrun over `procs` processes (one per
    GPU on CUDA, gloo processes on CPU), unless the cache already holds it. The run lands where
    `train_or_load` looks for it (same config hash and device kind), so the caller then loads it in
    this process. A failed launch raises with the command and the run it concerns."""
    import subprocess

    from sam.config import save_yaml
    from sam.train.runs import run_dir_for

    dev, runs = device(), runs.resolve()  # the launch runs from the repository root
    if dev == "cuda" and procs > torch.cuda.device_count():
        raise RuntimeError(f"--train-procs {procs}: only {torch.cuda.device_count()} CUDA devices are visible")
    run_dir = run_dir_for(cfg, runs, dev)
    if (run_dir / "model").is_dir():
        return run_dir
    runs.mkdir(parents=True, exist_ok=True)
    config = runs / f".{run_dir.name}.torchrun.yaml"  # the run's full config, read back by every process
    save_yaml(cfg, config)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        "-m",
        "sam.cli",
        "train",
        "--config",
        str(config),
        "--runs-dir",
        str(runs),
        "--device",
        dev,
        "--no-progress",
    ]
    try:
        done = subprocess.run(cmd, cwd=common.REPO)
    finally:
        config.unlink(missing_ok=True)
    if done.returncode != 0 or not (run_dir / "model").is_dir():
        raise RuntimeError(f"training {run_dir.name} under torchrun failed (exit code {done.returncode}): {' '.join(cmd)}")
    return run_dir


def train_parallel(cfgs: Sequence[ExperimentConfig], runs: Path, slots: int) -> list[Path]:
    """Train the runs of `cfgs` that the cache lacks, `slots` at a time, each by `sam train` in a
    process of its own (`launch`: one GPU per process on CUDA, the CPU cores split between them
    otherwise). Stages several runs share (LM pretraining, the encoder stage) are trained once: the
    run cache's stage locks make the others wait for them. Every launch runs to its end; then the
    failures are raised together, each with the log file it left under `runs`, while the runs that
    trained stay cached. Returns the run folders trained."""
    from sam.config import save_yaml
    from sam.train.runs import run_dir_for

    dev, runs = device(), runs.resolve()
    todo: dict[str, tuple[ExperimentConfig, Path]] = {}
    for cfg in cfgs:
        run_dir = run_dir_for(cfg, runs, dev)
        if not (run_dir / "model").is_dir():
            todo.setdefault(run_dir.name, (cfg, run_dir))
    if not todo:
        return []
    runs.mkdir(parents=True, exist_ok=True)
    jobs = []
    for cfg, run_dir in todo.values():
        config = runs / f".{run_dir.name}.parallel.yaml"
        save_yaml(cfg, config)
        cmd = [sys.executable, "-m", "sam.cli", "train", "--config", str(config), "--runs-dir", str(runs), "--device", dev, "--no-progress"]
        jobs.append(Job(run_dir.name, cmd, runs / f".{run_dir.name}.parallel.log", lambda d=run_dir: (d / "model").is_dir(), config))
    failed = launch(jobs, slots, f"training {len(jobs)} runs, {slots} at a time", "run")
    if failed:
        raise RuntimeError(f"--parallel-runs: {len(failed)} of {len(todo)} runs failed to train: " + "; ".join(failed))
    return [run_dir for _, run_dir in todo.values()]


def measure_parallel(s: common.Settings) -> None:
    """Generate and probe everything the script needs in `s.parallel_runs` worker processes (one GPU
    each on CUDA): each reruns the script with ``--defer-scoring --measure-shard I/N`` and measures
    only the uncached items whose cache key falls in its share. This process then finds them all
    cached and scores (or defers) as usual. Failures are raised together with their logs. Settings
    that belong to no script of experiments/ (a notebook's, say) launch nothing: their caller measures."""
    n, runs = s.parallel_runs, s.runs.resolve()
    script = common.REPO / "experiments" / f"{s.name}.py"
    if not script.is_file():
        return
    args, skip = [], False
    for a in s.argv[1:]:  # the script's own flags, less --parallel-runs (a worker measures; it launches nothing)
        if skip or a.startswith("--parallel-runs"):
            skip = a == "--parallel-runs"
            continue
        args.append(a)
    runs.mkdir(parents=True, exist_ok=True)
    jobs = [
        Job(
            f"measurement share {i}/{n}",
            [sys.executable, str(script), *args, "--runs", str(runs), "--defer-scoring", "--measure-shard", f"{i}/{n}"],
            runs / f".{s.name}.measure-{i}-of-{n}.log",
            lambda: True,
            cwd=Path.cwd(),
        )
        for i in range(n)
    ]  # paths as the caller gave them
    failed = launch(jobs, n, f"measuring in {n} processes", "share")
    if failed:
        raise RuntimeError(f"--parallel-runs: {len(failed)} of {n} measurement processes failed: " + "; ".join(failed))


@dataclass
class Job:
    """One process `launch` runs: its command, its log, and how to tell that it did its work."""

    name: str
    cmd: list[str]
    log: Path
    succeeded: Any  # () -> bool, asked after the process exited with code 0
    config: Path | None = None  # a launch file removed when the process ends
    cwd: Path = common.REPO


def launch(jobs: Sequence[Job], slots: int, desc: str, unit: str) -> list[str]:
    """Run `jobs` as processes, `slots` at a time: on CUDA each on one visible GPU of its own, on the
    CPU with the cores split between them (OMP_NUM_THREADS). A job's output goes to its log, which is
    removed when it succeeds. Returns "name (exit code; log)" for each failure, after all ended."""
    import subprocess
    import time

    from sam.progress import Progress

    dev = device()
    if dev == "cuda" and slots > torch.cuda.device_count():
        raise RuntimeError(f"--parallel-runs {slots}: only {torch.cuda.device_count()} CUDA devices are visible")
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or [str(i) for i in range(slots)]
    threads = str(max(1, (os.cpu_count() or 1) // slots))
    pending, active, free, failed = list(jobs), {}, list(range(slots)), []
    bar = Progress(desc, len(pending), unit=unit)  # a bar on a terminal, timed lines in a log
    try:
        while pending or active:
            while pending and free:
                slot, job = free.pop(0), pending.pop(0)
                env = {**os.environ, "OMP_NUM_THREADS": threads}
                if dev == "cuda":
                    env["CUDA_VISIBLE_DEVICES"] = visible[slot]
                with open(job.log, "w") as out:
                    active[slot] = (subprocess.Popen(job.cmd, cwd=job.cwd, env=env, stdout=out, stderr=subprocess.STDOUT), job)
            time.sleep(0.5)
            for slot, (proc, job) in list(active.items()):
                if proc.poll() is None:
                    continue
                del active[slot]
                free.append(slot)
                if job.config is not None:
                    job.config.unlink(missing_ok=True)
                if proc.returncode == 0 and job.succeeded():
                    job.log.unlink(missing_ok=True)
                else:
                    failed.append(f"{job.name} (exit code {proc.returncode}; log {job.log})")
                bar.update(1)
    finally:  # interrupted: stop the launches, keep what they wrote (stages and measurements resume)
        for proc, job in active.values():
            proc.terminate()
            proc.wait()
            if job.config is not None:
                job.config.unlink(missing_ok=True)
        for job in pending:
            if job.config is not None:
                job.config.unlink(missing_ok=True)
        bar.close()
    return failed
