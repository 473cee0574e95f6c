"""Fbank throughput: `sam.model.audio.waves_to_features` (batched torch) vs transformers' ASTFeatureExtractor.

Both turn the same real recordings (sonic-pi and asterisk Debian packages, decoded to 16 kHz once up
front) into normalized [1024, 128] AST/EAT inputs; the script checks that the outputs agree (max abs
difference) and times, alternating in one process: the extractor clip by clip (its numpy path, the
only one without torchaudio), ours clip by clip, and ours on the whole batch. Target: batched >= 5x
the extractor.

    python benchmarks/bench_fbank.py [--clips 64] [--repeats 3]

Writes benchmarks/results/fbank_cpu.json and .md. It must never report a number it did not measure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from glob import glob
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_lm_cpu import environment, time_alternating, write_results  # noqa: E402
from sam.config import AudioConfig  # noqa: E402
from sam.model.audio import load_audio, wave_to_features, waves_to_features  # noqa: E402


def real_clips(n: int) -> list[np.ndarray]:
    """Up to 10 s of each of `n` real recordings, alternating instruments and speech."""
    music = sorted(glob("/usr/share/sonic-pi/samples/*.flac"))
    speech = sorted(glob("/usr/share/asterisk/sounds/en*/*.wav"))
    if not music or not speech:
        raise SystemExit("needs the Debian packages sonic-pi-samples and asterisk-core-sounds-en-wav")
    paths = [p for pair in zip(music, speech) for p in pair][:n]
    return [load_audio(p)[:160000] for p in paths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    from transformers import ASTFeatureExtractor

    fe = ASTFeatureExtractor()
    cfg = AudioConfig(norm_mean=fe.mean, norm_std=fe.std, target_frames=fe.max_length, window_type="hanning")
    waves = real_clips(args.clips)
    seconds = sum(len(w) for w in waves) / 16000

    ref = np.stack([fe(w, sampling_rate=16000, return_tensors="np")["input_values"][0] for w in waves])
    ours = waves_to_features(waves, cfg).numpy()
    max_diff = float(np.abs(ref - ours).max())

    times = time_alternating(
        {
            "ASTFeatureExtractor, per clip": lambda: [fe(w, sampling_rate=16000, return_tensors="np") for w in waves],
            "sam.audio, per clip": lambda: [wave_to_features(w, cfg) for w in waves],
            "sam.audio, batched": lambda: waves_to_features(waves, cfg),
        },
        repeats=args.repeats,
        warmup=1,
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["ASTFeatureExtractor, per clip"]
    rows = {
        k: {"seconds": t, "clips_per_s": len(waves) / t, "audio_seconds_per_s": seconds / t, "speedup_vs_extractor": base / t}
        for k, t in med.items()
    }
    record = {
        **environment(torch.device("cpu")),
        "clips": len(waves),
        "audio_seconds": seconds,
        "max_abs_diff_vs_extractor": max_diff,
        "repeats": args.repeats,
        "results": rows,
        "target": "batched >= 5x ASTFeatureExtractor per clip",
        "target_met": rows["sam.audio, batched"]["speedup_vs_extractor"] >= 5.0,
    }
    md = [
        "# Fbank throughput (CPU)",
        "",
        f"{len(waves)} real clips ({seconds:.0f} s of audio), 128 mel bins, 1024 frames, AudioSet normalization.",
        f"Device: {record['device']}; torch {record['versions']['torch']}, transformers {record['versions']['transformers']}.",
        f"Max |ours - ASTFeatureExtractor| over all outputs: {max_diff:.2e}.",
        "",
        "| method | clips/s | audio s/s | speedup vs extractor |",
        "|---|---:|---:|---:|",
        *[f"| {k} | {r['clips_per_s']:.1f} | {r['audio_seconds_per_s']:.0f} | {r['speedup_vs_extractor']:.1f}x |" for k, r in rows.items()],
        "",
        f"Target (batched >= 5x): {'met' if record['target_met'] else 'NOT met'}. Median of {args.repeats} alternating repeats.",
    ]
    write_results(Path(args.out), "fbank_cpu", record, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
