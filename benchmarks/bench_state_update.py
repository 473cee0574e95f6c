"""Cost of exact state-update distances: `probes.state_updates` vs a plain forward and vs the reference.

Measures, side by side in one process, on one random-weight `sam.lm.MambaLM` of a named shape:
- a plain forward pass (no hooks);
- `probes.state_updates` for every layer, head and token (the forward + chunked closed form in the
  in_proj hooks), target <= 1.5x the plain forward;
- the token-by-token reference (`reference=True`), target >= 50x slower than the closed form;
- extra memory: on CUDA the peak allocated over the plain forward's; on CPU the peak RSS of a fresh
  worker process doing the same work (run once per variant), against the bytes every h_t would take.

    python benchmarks/bench_state_update.py                                        # CPU, cpu-small, 2,048 tokens
    python benchmarks/bench_state_update.py --device cuda --shape 780m --tokens 8192   # kernel path on a GPU

On CUDA the forward takes mamba_ssm's Triton kernels when it is installed (sam.mamba2 dispatch);
the probe math is PyTorch on the same device. Writes benchmarks/results/state_update_<device>_<shape>.json
and .md. It must never report a number it did not measure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import probes  # noqa: E402
from benchmarks.bench_train import _kernel_path as kernel_path  # noqa: E402
from benchmarks.bench_train import key_value_markdown, versions  # noqa: E402
from sam.lm import MambaLM, named_config  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="cpu-small", help="sam.lm.named_config name: cpu-small, 130m, 780m, ...")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunk-size", type=int, default=32, help="probe chunk length")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="probe arithmetic")
    p.add_argument("--model-dtype", default="", choices=["", *DTYPES], help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--ref-layers", type=int, default=0, help="time the reference on this many layers and scale (0 = all)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--worker", default="", choices=["", "plain", "state"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[MambaLM, torch.Tensor, torch.device]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.model_dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    torch.manual_seed(0)
    model = MambaLM(named_config(args.shape)).to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens), device=device)
    return model, ids, device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def worker(args: argparse.Namespace) -> int:
    """One variant in a fresh process; prints its peak RSS (CPU memory measurement)."""
    model, ids, device = build(args)
    with torch.no_grad():
        model(input_ids=ids)  # warm-up, so both variants' peaks include the same forward buffers
        if args.worker == "plain":
            model(input_ids=ids)
        else:
            probes.state_updates(model, {"input_ids": ids}, dtype=DTYPES[args.dtype], chunk_size=args.chunk_size)
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    return 0


def cpu_extra_memory(argv: list[str]) -> dict[str, int]:
    peaks = {}
    for variant in ("plain", "state"):
        out = subprocess.run([sys.executable, __file__, *argv, "--worker", variant], capture_output=True, text=True, check=True)
        peaks[variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"]
    return peaks


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        return worker(args)
    model, ids, device = build(args)
    cfg = model.config
    inputs = {"input_ids": ids}
    dtype = DTYPES[args.dtype]

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    def state() -> Any:
        return probes.state_updates(model, inputs, dtype=dtype, chunk_size=args.chunk_size)

    plain(), state()  # warm-up (kernel compilation, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        plain()
        plain_peak = torch.cuda.max_memory_allocated(device) - base
        torch.cuda.reset_peak_memory_stats(device)
        state()
        state_peak = torch.cuda.max_memory_allocated(device) - base
        memory = {"kind": "CUDA peak allocated above the model", "plain_bytes": plain_peak, "state_bytes": state_peak}
    else:
        peaks = cpu_extra_memory(argv)
        memory = {"kind": "peak RSS of a fresh process", "plain_bytes": peaks["plain"], "state_bytes": peaks["state"]}
    memory["extra_bytes"] = memory["state_bytes"] - memory["plain_bytes"]

    t_plain, t_state = [], []
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        t_plain.append(timed(plain, device))
        t_state.append(timed(state, device))
    layers = list(range(cfg.n_layer)) if not args.ref_layers else list(range(min(args.ref_layers, cfg.n_layer)))
    t_ref = timed(lambda: probes.state_updates(model, inputs, layers=layers, reference=True), device)
    # The reference's forward is shared work; only its per-layer loop scales with the layer count.
    t_plain_med = statistics.median(t_plain)
    t_ref_all = t_plain_med + (t_ref - t_plain_med) * cfg.n_layer / len(layers)
    t_state_med = statistics.median(t_state)

    nheads = cfg.expand * cfg.d_model // cfg.headdim
    states_bytes = cfg.n_layer * args.batch * args.tokens * nheads * cfg.headdim * cfg.d_state * torch.finfo(dtype).bits // 8
    result = {
        "name": f"state_update_{device.type}_{args.shape}" + ("" if args.dtype == "float64" else f"_{args.dtype}"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)",
        "kernels": kernel_path(device),
        "shape": args.shape,
        "lm": {k: getattr(cfg, k) for k in ("d_model", "n_layer", "d_state", "headdim", "ngroups", "chunk_size")} | {"nheads": nheads},
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "probe_dtype": args.dtype,
        "probe_chunk_size": args.chunk_size,
        "batch": args.batch,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "seconds": {"plain_forward": t_plain, "state_updates": t_state, "reference_measured": t_ref, "reference_layers_timed": len(layers)},
        "median_plain_s": t_plain_med,
        "median_state_s": t_state_med,
        "reference_s": t_ref_all,
        "state_over_plain": t_state_med / t_plain_med,
        # The probe's own work (everything beyond the forward) against the reference's own work.
        "reference_extra_over_state_extra": (t_ref_all - t_plain_med) / max(t_state_med - t_plain_med, 1e-9),
        "largest_transient_bytes_estimate": args.batch * args.tokens * nheads * args.chunk_size * torch.finfo(dtype).bits // 8,
        "reference_over_state": t_ref_all / t_state_med,
        "targets": {"state_over_plain_max": 1.5, "reference_over_state_min": 50.0},
        "memory": memory,
        "all_states_would_take_bytes": states_bytes,
        "output_bytes": 2 * cfg.n_layer * args.batch * args.tokens * nheads * torch.finfo(dtype).bits // 8,
        "versions": versions(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{result['name']}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{result['name']}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    mib = 1024**2
    m = r["memory"]
    ok = lambda good: "meets target" if good else "MISSES target"  # noqa: E731
    rows = [
        ("device", r["device"]),
        ("forward kernels", r["kernels"]),
        ("model", f"MambaLM {r['shape']} ({r['lm']['n_layer']} layers x {r['lm']['nheads']} heads, headdim {r['lm']['headdim']}, d_state {r['lm']['d_state']}), {r['model_dtype']}"),
        ("input", f"{r['batch']} x {r['tokens']} tokens"),
        ("CPU threads / 1-min load average at the end", f"{r['threads']} / {r['load_average_1m']:.1f}"),
        ("probe", f"{r['probe_dtype']}, chunk {r['probe_chunk_size']}"),
        ("plain forward (median)", f"{r['median_plain_s'] * 1e3:.1f} ms"),
        ("forward + state distances, every layer/head/token (median)", f"{r['median_state_s'] * 1e3:.1f} ms = {r['state_over_plain']:.2f}x the plain forward ({ok(r['state_over_plain'] <= 1.5)} <= 1.5x)"),
        ("token-by-token reference", f"{r['reference_s']:.2f} s = {r['reference_over_state']:.0f}x the closed form ({ok(r['reference_over_state'] >= 50)} >= 50x)"
         + ("" if r["seconds"]["reference_layers_timed"] == r["lm"]["n_layer"] else f"; timed on {r['seconds']['reference_layers_timed']} layers and scaled")),
        ("probe work alone vs the reference's own work (forward subtracted from both)", f"{r['reference_extra_over_state_extra']:.1f}x cheaper"),
        ("extra memory", f"{m['extra_bytes'] / mib:.1f} MiB measured ({m['kind']}: {m['state_bytes'] / mib:.1f} vs {m['plain_bytes'] / mib:.1f} MiB); "
         f"largest per-layer transient [b, T, heads, chunk] about {r['largest_transient_bytes_estimate'] / mib:.1f} MiB"),
        ("results kept (distance + norm per layer/head/token)", f"{r['output_bytes'] / mib:.2f} MiB"),
        ("storing every h_t instead would take", f"{r['all_states_would_take_bytes'] / mib:.0f} MiB"),
        ("versions", ", ".join(f"{k} {v}" for k, v in r["versions"].items())),
    ]
    return key_value_markdown("State-update distance cost", rows)


if __name__ == "__main__":
    sys.exit(main())
