"""Move a run cache's measurements between machines without its weights.

`export FILE` packs, from `--runs`, every run's record (``run.json``, ``config.yaml``, ``log.csv``)
and the measurement cache (``evals/``: generated answers, scores, probe rows, choice likelihoods) into one .tar.gz,
typically a few MB where the weights are GBs. `import FILE` unpacks it into another run cache,
keeping any file that is already there (a differing one is reported, not overwritten).

The intended use: on a GPU machine without the text scorers (MiniLM, Java),
``table_main.py --preset gpu --defer-scoring`` trains, generates and probes; ``export`` packs the
result; on a machine with the scorers, ``import`` and ``table_main.py --preset gpu --cached cuda``
scores the answers and writes the outputs (`measure`'s docstring has the cache layout).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ("run.json", "config.yaml", "log.csv")
EVAL_SUFFIXES = (".json", ".csv")


def members(runs: Path) -> list[Path]:
    """The files `export` packs, relative to `runs`, sorted (so the archive lists them in a stable order)."""
    found = [p for p in runs.glob("*/*") if p.name in RUN_FILES and p.parent.name != "evals" and p.is_file()]
    found += [p for p in (runs / "evals").glob("*") if p.is_file() and p.suffix in EVAL_SUFFIXES and ".tmp" not in p.name]
    return sorted(p.relative_to(runs) for p in found)


def export(file: Path, runs: Path) -> int:
    names = members(runs)
    if not names:
        raise SystemExit(f"export: nothing to pack under {runs} (no run records, no evals/)")
    tmp = file.with_name(file.name + ".partial")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in names:
            tar.add(runs / name, arcname=str(name), recursive=False)
    tmp.replace(file)
    print(f"export: {len(names)} files from {runs} -> {file} ({file.stat().st_size / 1e6:.1f} MB)")
    return len(names)


def import_(file: Path, runs: Path) -> tuple[int, list[str]]:
    """Unpack `file` into `runs`; returns (files written, names kept because a different file was there)."""
    from sam.checkpoint import atomic_write_bytes

    written, conflicts = 0, []
    with tarfile.open(file, "r:gz") as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            ok = (
                m.isfile()
                and ".." not in parts
                and not Path(m.name).is_absolute()
                and (
                    (len(parts) == 2 and parts[0] == "evals" and Path(m.name).suffix in EVAL_SUFFIXES)
                    or (len(parts) == 2 and parts[1] in RUN_FILES)
                )
            )
            if not ok:
                raise SystemExit(
                    f"import: {file}: unexpected member {m.name!r} (not a run record or an evals/ file); nothing after it unpacked"
                )
            data = tar.extractfile(m).read()
            dest = runs / m.name
            if dest.exists():
                if dest.read_bytes() != data:
                    conflicts.append(m.name)
                continue
            atomic_write_bytes(dest, data)
            written += 1
    print(
        f"import: {written} files from {file} into {runs}"
        + (f"; kept {len(conflicts)} differing files already there: {', '.join(conflicts[:5])}" if conflicts else "")
    )
    return written, conflicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="export_measurements.py", description=__doc__.strip().splitlines()[0])
    p.add_argument("action", choices=("export", "import"))
    p.add_argument("file", type=Path, help="the .tar.gz to write (export) or read (import)")
    p.add_argument("--runs", type=Path, default=REPO / "runs", help="the run cache (default: runs/)")
    args = p.parse_args(argv)
    if args.action == "export":
        export(args.file, args.runs)
    else:
        if not args.file.is_file():
            p.error(f"{args.file}: no such file")
        import_(args.file, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
