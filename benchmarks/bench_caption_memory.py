"""Peak memory of `sam caption` over many long files: bounded by the batch size and the model's clip
length, not by how many files there are or how long they are.

Builds N files of M minutes each from real corpus recordings (clips concatenated in a seeded random
order, PCM-16 at 16 kHz), saves an untrained model of the chosen preset with a BPE tokenizer (the
answers do not matter here, only memory), then runs ``python -m sam.cli caption`` in a child process
for each file count and reads the child's peak resident memory (`getrusage(RUSAGE_CHILDREN)`,
measured per run in a fresh child). A run on one short file gives the fixed cost (Python, torch,
the model).

    python benchmarks/bench_caption_memory.py                      # 100 ten-minute files
    python benchmarks/bench_caption_memory.py --files 10 --minutes 2

Writes benchmarks/results/caption_memory_<preset>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sam.config import preset
from sam.data.corpus import prepare_corpus, read_clip, read_manifest


def long_files(folder: Path, n: int, minutes: float, seed: int = 0) -> list[Path]:
    """`n` files of `minutes` each, concatenated from real corpus clips."""
    rows = read_manifest(REPO / "data")
    rng = np.random.default_rng(seed)
    target = int(minutes * 60 * 16000)
    paths = []
    for i in range(n):
        parts, total = [], 0
        while total < target:
            wave = read_clip(REPO / "data", rows[int(rng.integers(len(rows)))])
            parts.append(wave)
            total += wave.size
        path = folder / f"long-{i:03d}.wav"
        sf.write(path, np.concatenate(parts)[:target], 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def child_peak(argv: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MiB, seconds, exit code) of one fresh child running `argv`."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t, rc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=True).stdout.split()
    return int(out[0]) / 1024, float(out[1]), int(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--preset", default="smoke")
    args = parser.parse_args()

    import torch

    from sam.model import SAM
    from sam.prompt import format_prompt
    from sam.tokenizer import train_bpe

    prepare_corpus(REPO / "data", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = long_files(tmp, args.files, args.minutes)
        build_s = time.perf_counter() - t
        rows = read_manifest(REPO / "data")
        tok = train_bpe([format_prompt("Write a caption for the audio clip.")] * 4 + [r["caption"] for r in rows], vocab_size=512)
        torch.manual_seed(0)
        cfg = preset(args.preset).model
        SAM(cfg, tok).save_pretrained(tmp / "model")
        base = [
            sys.executable,
            "-m",
            "sam.cli",
            "caption",
            "--checkpoint",
            str(tmp / "model"),
            "--device",
            "cpu",
            "--max-new-tokens",
            "8",
            "--batch-size",
            str(args.batch_size),
        ]
        short = tmp / "short.wav"
        sf.write(short, read_clip(REPO / "data", rows[0]), 16000, subtype="PCM_16")
        results = []
        counts = sorted({1, max(1, args.files // 10), args.files})
        fixed_mib, fixed_s, _ = child_peak(base + [str(short)])
        for n in counts:
            mib, secs, rc = child_peak(base + [str(p) for p in paths[:n]])
            results.append({"files": n, "peak_rss_mib": round(mib, 1), "seconds": round(secs, 1), "exit": rc})
            print(f"{n} files of {args.minutes} min: peak RSS {mib:.0f} MiB, {secs:.1f} s", file=sys.stderr)
    report = {
        "preset": args.preset,
        "minutes_per_file": args.minutes,
        "batch_size": args.batch_size,
        "model_clip_seconds": cfg.audio.target_frames / 100,
        "one_short_file_peak_rss_mib": round(fixed_mib, 1),
        "one_short_file_seconds": round(fixed_s, 1),
        "runs": results,
        "build_files_seconds": round(build_s, 1),
        "bytes_per_file": int(args.minutes * 60 * 16000 * 2),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    out = REPO / "benchmarks" / "results" / f"caption_memory_{args.preset}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# `sam caption` peak memory, {args.preset} preset (model clip {report['model_clip_seconds']:.2f} s)",
        "",
        f"Files of {args.minutes:g} min each (PCM-16, 16 kHz, real corpus recordings), --batch-size {args.batch_size}, "
        f"--max-new-tokens 8, untrained model. One short file: peak RSS {fixed_mib:.0f} MiB ({fixed_s:.1f} s).",
        "",
        "| files | peak RSS (MiB) | seconds |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {r['files']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.1f} |" for r in results]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
