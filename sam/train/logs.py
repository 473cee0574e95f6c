"""Per-step training logs (log.csv + log.jsonl) and the progress bar."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sam.progress import Progress


class StageLog:
    """Per-step rows appended to log.csv and log.jsonl (rank 0); rows past a resume point are dropped."""

    FIELDS = ["stage", "step", "loss", "lr", "grad_norm", "clips", "tokens", "clips_per_s", "tokens_per_s", "elapsed_s"]

    def __init__(self, folder: Path, stage: str, resume_step: int, enabled: bool):
        self.csv, self.jsonl, self.stage, self.enabled = folder / "log.csv", folder / "log.jsonl", stage, enabled
        if enabled:
            self._truncate(resume_step)

    def _truncate(self, step: int) -> None:
        rows = []
        if self.jsonl.is_file():
            rows = [
                r for r in (json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()) if r.get("step", 0) <= step
            ]
        with open(self.jsonl, "w") as fj, open(self.csv, "w", newline="") as fc:
            w = csv.DictWriter(fc, fieldnames=self.FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                fj.write(json.dumps(r) + "\n")
                if "loss" in r:
                    w.writerow(r)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"stage": self.stage, **row}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if "loss" in row:
            with open(self.csv, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore").writerow(row)


def progress_bar(name: str, start: int, total: int, enabled: bool, log: Path | None = None) -> Progress:
    """A bar on a terminal, timed lines in a log (and in `log`, when given)."""
    return Progress(name, total, initial=start, enabled=enabled, log=log)
