"""Encoder + connector forward cost per token layout: audio tokens per clip and milliseconds per batch.

Builds `sam.model.encoder.AudioEncoder` of one size (random weights: cost does not depend on values) and
one `sam.model.connector.Connector` per layout, then times, alternating in one process, the encoder
forward and each layout's connector forward on its output (no grad). The LM sees the connector's
tokens, so the token count is what each layout costs downstream.

    python benchmarks/bench_encoder.py                                    # CPU, small encoder, 5 s clips
    python benchmarks/bench_encoder.py --device cuda --size base --frames 1024 --lm-dim 768 --batch 32

Writes benchmarks/results/encoder_<device>_<size>.json and .md. It must never report a number it
did not measure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_lm_cpu import environment, time_alternating, write_results  # noqa: E402
from sam.config import AudioConfig, ConnectorConfig, EncoderConfig  # noqa: E402
from sam.model.connector import Connector  # noqa: E402
from sam.model.encoder import AudioEncoder, encoder_shape  # noqa: E402

LAYOUTS = [("concat", 1), ("time_major", 1), ("freq_major", 1), ("pool", 1), ("pool", 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--frames", type=int, default=512, help="fbank frames per clip (1024 = 10 s)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lm-dim", type=int, default=256, help="LM width the connector projects to")
    ap.add_argument("--sep-len", type=int, default=1, help="tokens of the separator text")
    ap.add_argument("--dtype", default="", choices=["", "float32", "bfloat16"], help="default: float32 on CPU, bfloat16 autocast on CUDA")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    torch.manual_seed(0)

    audio = AudioConfig(target_frames=args.frames, clip_seconds=args.frames / 100)
    enc = AudioEncoder(EncoderConfig(size=args.size), audio).to(device).eval()
    dim, depth, heads = encoder_shape(EncoderConfig(size=args.size))
    grid_shape = enc.grid_shape(args.frames)
    conns = {
        f"{layout}" + (f" (pool_time {pt})" if layout == "pool" else ""): Connector(
            ConnectorConfig(layout=layout, pool_time=pt), dim, args.lm_dim, grid_shape, sep_len=args.sep_len
        )
        .to(device)
        .eval()
        for layout, pt in LAYOUTS
    }
    sep = torch.randn(args.sep_len, args.lm_dim, device=device)
    fbank = torch.randn(args.batch, args.frames, 128, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    with torch.no_grad(), autocast:
        grid = enc(fbank)

    def timed(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), autocast:
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return run

    fns = {"encoder": timed(lambda: enc(fbank))}
    fns.update({name: timed(lambda c=c: c(grid, sep)) for name, c in conns.items()})
    times = time_alternating(fns, repeats=args.repeats, warmup=2)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    t, f = grid_shape
    rows = [
        {
            "layout": name,
            "tokens_per_clip": c.num_tokens(t, f),
            "connector_ms": ms[name],
            "encoder_plus_connector_ms": ms["encoder"] + ms[name],
            "connector_params": sum(p.numel() for p in c.parameters()),
        }
        for name, c in conns.items()
    ]
    env = environment(device)
    record = {
        **env,
        "encoder": {
            "size": args.size,
            "embed_dim": dim,
            "depth": depth,
            "heads": heads,
            "params": sum(p.numel() for p in enc.parameters()),
            "grid": [t, f],
        },
        "frames": args.frames,
        "batch": args.batch,
        "lm_dim": args.lm_dim,
        "dtype": dtype,
        "encoder_ms": ms["encoder"],
        "repeats": args.repeats,
        "layouts": rows,
    }
    md = [
        f"# Encoder + connector forward cost ({device.type})",
        "",
        f"Encoder {args.size} ({dim}-d, {depth} blocks, {heads} heads, {record['encoder']['params'] / 1e6:.1f} M params), "
        f"{args.frames} frames -> {t} x {f} grid; batch {args.batch}; LM width {args.lm_dim}; {dtype}; separator {args.sep_len} token(s).",
        f"Device: {env['device']}; torch {env['versions']['torch']}. Encoder forward: {ms['encoder']:.1f} ms per batch.",
        "",
        "| layout | audio tokens / clip | connector ms | encoder + connector ms | connector params |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {r['layout']} | {r['tokens_per_clip']} | {r['connector_ms']:.2f} | {r['encoder_plus_connector_ms']:.1f} | {r['connector_params'] / 1e6:.2f} M |"
            for r in rows
        ],
        "",
        f"Median of {args.repeats} alternating repeats, no grad.",
    ]
    write_results(Path(args.out), f"encoder_{device.type}_{args.size}", record, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
