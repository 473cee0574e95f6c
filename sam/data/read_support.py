"""What every dataset reader shares: the error for an unreadable file, the report of kept and skipped rows,
and a CSV row stream that names each bad row by its physical line (header = line 1)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam.data.types import Example


class DatasetError(ValueError):
    """A dataset file cannot be read at all; the message names the file and the reason."""


@dataclass
class ReadReport:
    """What a reader kept and what it skipped (row number, reason)."""

    source: str
    rows: int = 0
    kept: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    missing_audio: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, row: int, reason: str) -> None:
        self.bad.append((row, reason))

    def __str__(self) -> str:
        head = f"{self.source}: {self.rows} rows, {self.kept} kept, {len(self.bad)} skipped"
        return "\n".join(
            [head]
            + [f"  row {r}: {why}" for r, why in self.bad[:20]]
            + ([f"  ... {len(self.bad) - 20} more"] if len(self.bad) > 20 else [])
        )


class Skip(Exception):
    """A row is unusable; the message is the reason."""


def need_fields(row: dict[str, Any], *keys: str) -> list[str]:
    vals = []
    for k in keys:
        v = row.get(k)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise Skip(f"missing field {k!r}")
        vals.append(v.strip() if isinstance(v, str) else v)
    return vals


def find_audio(report: ReadReport, row: int, candidates: Iterable[Path], check: bool) -> str:
    """First existing candidate path; with `check`, none existing skips the row (reported)."""
    candidates = list(candidates)
    for p in candidates:
        if p.is_file():
            return str(p)
    if check:
        report.missing_audio.append((row, str(candidates[0])))
        raise Skip(f"audio file missing: {candidates[0]}")
    return str(candidates[0])


class BadRow:
    """A CSV row that cannot be trusted as parsed (stray comma, runaway quote, undecodable bytes)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def open_text(path: Path):
    # utf-8-sig drops the byte-order mark Excel writes ("CSV UTF-8"); surrogateescape keeps invalid
    # bytes visible as lone surrogates, so the row holding them is skipped and named, not garbled.
    return open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")


def row_problem(fields: list[str], n_header: int | None, first: int, last: int) -> str | None:
    """Why a parsed row is not what its line says, or None: undecodable bytes, a quoted field that
    runs over several lines (an unterminated quote swallows what follows), or a field count other
    than the header's (an unquoted comma splits a field)."""
    for v in fields:
        bad = next((c for c in v if "\udc80" <= c <= "\udcff"), None)
        if bad is not None:
            return f"not UTF-8 text (byte 0x{ord(bad) - 0xDC00:02x}); save the file as UTF-8"
    if last > first and any("\n" in v or "\r" in v for v in fields):
        return f"a quoted field runs over lines {first}-{last} (an unterminated quote?); those lines are skipped"
    if n_header is not None and len(fields) != n_header:
        return f"{len(fields)} fields, the header has {n_header} (an unquoted comma or a missing field?)"
    return None


def physical_rows(reader: Any, path: Path) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of each row a csv.reader parses; csv errors name their line."""
    last = 0
    while True:
        first = last + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DatasetError(f"{path}: line {first}: {e}") from None
        last = reader.line_num
        yield first, last, fields


def csv_rows(path: Path, required: set[str], comment: str | None = None) -> Iterator[tuple[int, dict[str, str] | BadRow]]:
    """(line number, row dict or BadRow) of a headed CSV; DatasetError if absent, undecodable in
    the header, or the header lacks `required`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file does not exist")
    with open_text(path) as f:
        lines = (ln for ln in f if not (comment and ln.startswith(comment)))
        rows = physical_rows(csv.reader(lines, skipinitialspace=True), path)
        header = [h.strip() for h in next(rows, (1, 1, []))[2]]
        if row_problem(header, None, 1, 1) or not required <= set(header):
            raise DatasetError(f"{path}: header must contain {sorted(required)}, got {header}")
        for first, last, fields in rows:
            if not fields:
                continue  # a blank line, as csv.DictReader skips it
            why = row_problem(fields, len(header), first, last)
            yield first, BadRow(why) if why else dict(zip(header, fields))


def collect(report: ReadReport, rows: Iterable[tuple[int, Any]], make) -> list[Example]:
    out: list[Example] = []
    for num, row in rows:
        report.rows += 1
        try:
            if isinstance(row, BadRow):
                raise Skip(row.reason)
            out.extend(make(num, row))
        except Skip as e:
            report.skip(num, str(e))
    report.kept = len(out)
    return out
