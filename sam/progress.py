"""Progress of long jobs, for people and for logs.

On a terminal, a tqdm bar. Otherwise (stderr redirected to a file or a pipe, a batch job) one plain
line per `interval` seconds, and at the start and the end:
``[stage1 (2 of 6 stages)] 120 of 400 steps, elapsed 1m05s, ETA 2m31s, loss=3.1``
so a job that runs for hours is never silent in its log. Where a run folder exists, the same lines
are appended to a log file in it. ``SAM_PROGRESS_SECONDS`` sets the interval (default 30).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts `total` units of work named `what`; a bar on a TTY, timed plain lines otherwise."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "steps",
        initial: int = 0,
        enabled: bool = True,
        log: str | Path | None = None,
        interval: float | None = None,
        stream: Any = None,
    ) -> None:
        self.what, self.total, self.unit, self.done, self.start = what, total, unit, initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interval = float(os.environ.get("SAM_PROGRESS_SECONDS", "30")) if interval is None else interval
        self.log = Path(log) if log is not None else None
        self.postfix = ""
        self.t0 = self.last = time.perf_counter()
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        if enabled and tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=what, unit=unit.rstrip("s") or unit, file=self.stream, dynamic_ncols=True, leave=False
            )
        self._line(force=True, console=enabled and self.bar is None)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_clock((self.total - self.done) / rate)}" if rate > 0 and self.done < self.total else ""
        return f"[{self.what}] {self.done} of {self.total} {self.unit}, elapsed {_clock(elapsed)}{eta}{self.postfix}"

    def _line(self, force: bool = False, console: bool = True) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        text = self.line()
        if console:
            print(text, file=self.stream, flush=True)
        if self.log is not None:
            try:
                with open(self.log, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            except OSError:
                self.log = None  # a progress log is a convenience; the work goes on without it

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        self._line(force=self.done >= self.total, console=self.enabled and self.bar is None)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "".join(f", {k}={v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
