"""Cost of exact state-update distances: `probes.state_updates` vs a plain forward and vs the reference.

Measures, side by side in one process, on one random-weight `sam.model.lm.MambaLM` of a named shape:
- a plain forward pass (no hooks);
- `probes.state_updates` for every layer, head and token (the forward + chunked closed form in the
  in_proj hooks), target <= 1.5x the plain forward;
- the token-by-token reference (`reference=True`, float64), target >= 50x slower than the closed form;
- extra memory: on CUDA the peak allocated over the plain forward's; on CPU the peak RSS of a fresh
  worker process doing the same work (run once per variant), against the bytes every h_t would take;
- accuracy: each probe variant's relative error against the reference (on the layers it ran) and,
  for float32 or a longer chunk, against the float64 closed form on every layer, head and token;
- where each probe variant's time goes (`--phase-repeats` extra runs, after the timed ones): the
  forward with its hooks, `ssm_inputs` over all layers, `update_stats` over all layers and, on the
  Triton backend, its carry and chunk kernels. CUDA events around each call on CUDA (the GPU
  stream's time between them), perf_counter on CPU; the forward is the run's wall time less the rest.

Every `--backends` x `--dtype` x `--chunk-size` (`--torch-chunk-size` for the torch backend when
given; x `--triton-tiles` x `--triton-precision` for the Triton backend) is a variant, timed interleaved with the plain forward; the Triton backend runs
float32 only. Each probe run is paired with a plain forward timed just before it, and the cost is
the median of those ratios (also reported: fastest over fastest, median over median), so the
forward's own drift on a shared machine (85 to 120 ms in one run) moves both sides alike.

    python benchmarks/bench_state_update.py                                        # CPU, cpu-small, 2,048 tokens
    python benchmarks/bench_state_update.py --device cuda --shape 780m --tokens 8192 \
        --dtype float64 float32 --chunk-size 32 64 128 --ref-layers 2            # kernel path on a GPU
    python benchmarks/bench_state_update.py --device cuda --shape 780m --tokens 8192 \
        --backends torch triton --dtype float64 float32 --chunk-size 16 32 64 \
        --triton-tiles 32x32x8 32x64x8 --ref-layers 2                              # PyTorch vs fused Triton kernels
    python benchmarks/bench_state_update.py --device cuda --shape 780m --tokens 8192 \
        --backends triton --dtype float32 --triton-precision ieee tf32x3 --ref-layers 1  # IEEE vs 3-pass TF32 dots

On CUDA the forward takes mamba_ssm's Triton kernels when it is installed (sam.mamba2 dispatch);
the probe math is PyTorch (`--backends torch`) or probes.triton_state's kernels (`triton`). Writes benchmarks/results/state_update_<device>_<shape>[_<dtypes>].json
(or --name) and .md. It must never report a number it did not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import probes  # noqa: E402
from benchmarks.probe_timing import phase_clock, triton_default_tile, triton_tile  # noqa: E402
from benchmarks.report import kernel_path, portable_command, versions  # noqa: E402
from benchmarks.state_update_report import markdown  # noqa: E402
from sam.model.lm import MambaLM, named_config  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="cpu-small", help="sam.lm.named_config name: cpu-small, 130m, 780m, ...")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunk-size", type=int, nargs="+", default=[32], help="probe chunk length(s); every dtype x chunk pair is timed")
    p.add_argument(
        "--torch-chunk-size",
        type=int,
        nargs="+",
        default=[],
        help="chunk length(s) of the torch backend only (default: --chunk-size), e.g. its fastest 64 beside Triton's 32",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument(
        "--dtype",
        nargs="+",
        default=[],
        choices=["float32", "float64"],
        help="probe arithmetic (one or more); default: the probe's own default for the device",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        type=_words,
        default=[["torch"]],
        metavar="BACKEND",
        help="probe implementation(s), space- or comma-separated: torch, triton (probes.state.update_stats backend)",
    )
    p.add_argument(
        "--triton-tiles",
        nargs="+",
        default=[""],
        metavar="PxNxWARPS[xSEG[xCHUNKWARPS]]",
        help="Triton carry-kernel state tile and warps, optionally the chunks per carry segment and the "
        "chunk kernel's warps, e.g. 32x32x8 or 32x32x2x16x4 (default: probes.triton_state's)",
    )
    p.add_argument(
        "--triton-precision",
        nargs="+",
        default=[probes.state.DEFAULT_TRITON_PRECISION],
        choices=list(probes.state.TRITON_PRECISIONS),
        help="Triton kernels' tl.dot input precision(s): ieee (float32) or tf32x3 (3-pass TF32 on tensor cores)",
    )
    p.add_argument(
        "--overlap",
        nargs="+",
        default=["on"],
        choices=["on", "off"],
        help="probe on a CUDA side stream beside the forward (on, the library default) or inline (off); both = two variants",
    )
    p.add_argument(
        "--overlap-layers",
        type=int,
        default=0,
        help="layers the overlapped probe may lag the forward (probes.state.OVERLAP_LAYERS; 0 = the library's)",
    )
    p.add_argument(
        "--phase-repeats",
        type=int,
        default=3,
        help="extra runs per variant timing its phases (forward, ssm_inputs, update_stats, kernels); 0 = skip",
    )
    p.add_argument("--model-dtype", default="", choices=["", *DTYPES], help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--ref-layers", type=int, default=0, help="time the reference on this many layers and scale (0 = all)")
    p.add_argument("--name", default="", help="result file name (default: state_update_<device>_<shape>[_<dtype>])")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--worker", default="", choices=["", "plain", "state"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.backends = list(dict.fromkeys(b for group in args.backends for b in group))
    bad = [b for b in args.backends if b not in ("torch", "triton")]
    if bad:
        p.error(f"--backends: unknown {bad}; choose from torch, triton")
    for tile in args.triton_tiles:
        if tile and not re.fullmatch(r"\d+x\d+x\d+(x\d+){0,2}", tile):
            p.error(f"--triton-tiles: {tile!r} is not PxNxWARPS[xSEG[xCHUNKWARPS]] (e.g. 32x32x8 or 32x32x2x16x4)")
    return args


def _words(text: str) -> list[str]:
    return [w for w in text.split(",") if w]


class Variant(NamedTuple):
    backend: str
    dtype: str
    chunk: int
    tile: str = ""  # Triton carry tile PxNxWARPS[xSEG[xCHUNKWARPS]]; "" = the module's default
    precision: str = ""  # Triton tl.dot input precision; "" on the torch backend
    overlap: bool = True  # probe on a side stream beside the forward (CUDA; state_updates' default)

    @property
    def label(self) -> str:
        return (
            f"{self.backend} {self.dtype}, chunk {self.chunk}"
            + (f", tile {self.tile}" if self.tile else "")
            + (f", {self.precision} dots" if self.precision else "")
            + ("" if self.overlap else ", no overlap")
        )


def run_variant(model: MambaLM, inputs: dict[str, Any], v: Variant) -> Any:
    with triton_tile(v.tile):
        return probes.state_updates(
            model,
            inputs,
            dtype=DTYPES[v.dtype],
            chunk_size=v.chunk,
            backend=v.backend,
            triton_precision=v.precision or probes.state.DEFAULT_TRITON_PRECISION,
            overlap=v.overlap,
        )


def phase_times(model: MambaLM, inputs: dict[str, Any], v: Variant, device: torch.device, repeats: int) -> dict[str, Any]:
    """Median seconds per phase of `repeats` probe runs: the forward with hooks (wall time less the
    timed calls), ssm_inputs and update_stats summed over layers, and the Triton kernels within.
    Always without overlap (the probe inline after each in_proj), so the phases add up."""
    runs: list[dict[str, float]] = []
    calls: dict[str, int] = {}
    v = v._replace(overlap=False)  # phases one after another, so each call's span is its own time
    for _ in range(repeats):
        with phase_clock(device, v.backend) as clock:
            total = timed(lambda: run_variant(model, inputs, v), device)
        got = clock.seconds()
        calls = clock.calls()
        row = {"total": total, **got}
        row["forward_with_hooks"] = total - got.get("ssm_inputs", 0.0) - got.get("update_stats", 0.0)
        if v.backend == "triton":  # update_stats less its kernel launches: gram_b, expm1, segment scan, buffers
            row["triton_outside_kernels"] = got.get("update_stats", 0.0) - got.get("carry_kernel", 0.0) - got.get("chunk_kernel", 0.0)
        runs.append(row)
    timer = "CUDA events (stream time between them)" if device.type == "cuda" else "perf_counter"
    return {
        "runs": repeats,
        "timer": timer,
        "calls_per_run": calls,
        "median_s": {k: statistics.median(r[k] for r in runs) for k in runs[0]},
    }


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


def probe_dtypes(args: argparse.Namespace, device: torch.device) -> list[str]:
    return args.dtype or [str(probes.state.default_dtype(device)).removeprefix("torch.")]


def worker(args: argparse.Namespace) -> int:
    """One variant in a fresh process; prints its peak RSS (CPU memory measurement)."""
    model, ids, device = build(args)
    with torch.no_grad():
        model(input_ids=ids)  # warm-up, so both variants' peaks include the same forward buffers
        if args.worker == "plain":
            model(input_ids=ids)
        else:
            backend = args.backends[0]
            precision = args.triton_precision[0] if backend == "triton" else ""
            run_variant(
                model,
                {"input_ids": ids},
                Variant(backend, probe_dtypes(args, device)[0], args.chunk_size[0], args.triton_tiles[0], precision),
            )
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    return 0


def cpu_peak_rss(argv: list[str], extra: list[str]) -> int:
    out = subprocess.run([sys.executable, __file__, *argv, *extra], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"]


def relative_error(got: dict[int, torch.Tensor], want: dict[int, torch.Tensor]) -> dict[str, float | int]:
    """|got - want| / want over every layer, head and token where want > 0 (max, median, 99.9th percentile)."""
    layers = sorted(want)
    g = torch.cat([got[k].double().flatten() for k in layers])
    w = torch.cat([want[k].double().flatten() for k in layers])
    keep = w > 0
    err = ((g[keep] - w[keep]).abs() / w[keep]).sort().values
    n = err.numel()
    if n == 0:
        return {"count": 0}
    pick = lambda q: float(err[min(n - 1, int(q * (n - 1)))])  # noqa: E731
    return {"count": n, "max": float(err[-1]), "median": pick(0.5), "p99_9": pick(0.999), "mean": float(err.mean())}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        return worker(args)
    model, ids, device = build(args)
    if args.overlap_layers:
        probes.state.runner.OVERLAP_LAYERS = args.overlap_layers
    cfg = model.config
    inputs = {"input_ids": ids}
    variants = [
        Variant(b, d, c, tile, precision, overlap == "on")
        for overlap in dict.fromkeys(args.overlap)
        for b in args.backends
        for d in probe_dtypes(args, device)
        for c in (args.torch_chunk_size or args.chunk_size if b == "torch" else args.chunk_size)
        for tile in (args.triton_tiles if b == "triton" else [""])
        for precision in (args.triton_precision if b == "triton" else [""])
        if b == "torch" or d == "float32"  # the kernels compute in float32 only
    ]
    if not variants:
        raise SystemExit("no variant to run: the Triton backend computes in float32 only (add --dtype float32)")
    for v in variants:  # refuse, with the reason, a backend this machine cannot run
        probes.state.resolve_backend(v.backend, device, DTYPES[v.dtype])
    label = lambda v: v.label  # noqa: E731

    def plain() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    def state(v: Variant) -> Any:
        return run_variant(model, inputs, v)

    plain()
    for v in variants:  # warm-up (kernel compilation, allocator)
        state(v)
    memory: dict[str, Any] = {}
    if device.type == "cuda":
        memory["kind"] = "CUDA peak allocated above the model"
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        plain()
        memory["plain_bytes"] = torch.cuda.max_memory_allocated(device) - base
        for v in variants:
            torch.cuda.reset_peak_memory_stats(device)
            state(v)
            memory[label(v)] = torch.cuda.max_memory_allocated(device) - base
    else:
        memory["kind"] = "peak RSS of a fresh process"
        memory["plain_bytes"] = cpu_peak_rss(argv, ["--worker", "plain"])
        for v in variants:
            extra = [
                "--backends",
                v.backend,
                "--dtype",
                v.dtype,
                "--chunk-size",
                str(v.chunk),
                "--triton-tiles",
                v.tile,
                "--triton-precision",
                v.precision or probes.state.DEFAULT_TRITON_PRECISION,
            ]
            memory[label(v)] = cpu_peak_rss(argv, ["--worker", "state", *extra])

    t_plain: list[float] = []
    t_state: dict[str, list[float]] = {label(v): [] for v in variants}
    t_pair: dict[str, list[float]] = {label(v): [] for v in variants}  # the plain forward timed just before each probe run
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every variant alike
        for v in variants:
            t_pair[label(v)].append(timed(plain, device))
            t_state[label(v)].append(timed(lambda v=v: state(v), device))
        t_plain.append(statistics.median(t_pair[label(v)][-1] for v in variants))
    phases = {label(v): phase_times(model, inputs, v, device, args.phase_repeats) for v in variants} if args.phase_repeats > 0 else {}
    layers = list(range(cfg.n_layer)) if not args.ref_layers else list(range(min(args.ref_layers, cfg.n_layer)))
    ref: dict[str, Any] = {}
    t_ref = timed(
        lambda: ref.setdefault("out", probes.state_updates(model, inputs, layers=layers, dtype=torch.float64, reference=True)), device
    )
    ref_out = ref["out"]
    # The reference's forward is shared work; only its per-layer loop scales with the layer count.
    t_plain_med = statistics.median(t_plain)
    t_ref_all = t_plain_med + (t_ref - t_plain_med) * cfg.n_layer / len(layers)

    # Accuracy: every variant against the float64 reference on the layers it ran, and against the
    # float64 closed form (smallest chunk) on every layer, head and token.
    exact = next((v for v in sorted(variants, key=lambda v: v.chunk) if v.dtype == "float64" and v.backend == "torch"), None)
    outs = {label(v): state(v) for v in variants}
    base_out = outs[label(exact)] if exact else None

    nheads = cfg.expand * cfg.d_model // cfg.headdim
    per_variant = {}
    for v in variants:
        key, bits = label(v), torch.finfo(DTYPES[v.dtype]).bits
        med = statistics.median(t_state[key])
        out = outs[key]
        acc: dict[str, Any] = {
            "vs_reference": {
                "layers": len(layers),
                "distance": relative_error({k: out.distance[k] for k in layers}, ref_out.distance),
                "state_norm": relative_error({k: out.state_norm[k] for k in layers}, ref_out.state_norm),
            }
        }
        if base_out is not None and v != exact:
            acc["vs_float64_closed_form"] = {
                "against": label(exact),
                "layers": cfg.n_layer,
                "distance": relative_error(out.distance, base_out.distance),
                "state_norm": relative_error(out.state_norm, base_out.state_norm),
            }
        per_variant[key] = {
            "backend": v.backend,
            "dtype": v.dtype,
            "chunk_size": v.chunk,
            "triton_tile": v.tile or None,
            "triton_precision": v.precision or None,
            "seconds": t_state[key],
            "median_s": med,
            "state_over_plain": med / t_plain_med,
            # Each probe run over the plain forward timed just before it (median), and fastest over fastest:
            # less sensitive than the medians' ratio to the machine's speed drifting during the run.
            "plain_before_s": t_pair[key],
            "paired_state_over_plain": statistics.median(s / p for s, p in zip(t_state[key], t_pair[key])),
            "fastest_state_over_fastest_plain": min(t_state[key]) / min(t_pair[key]),
            "reference_over_state": t_ref_all / med,
            # The probe's own work (everything beyond the forward) against the reference's own work.
            "reference_extra_over_state_extra": (t_ref_all - t_plain_med) / max(med - t_plain_med, 1e-9),
            "extra_memory_bytes": memory[key] - memory["plain_bytes"],
            "largest_transient_bytes_estimate": args.batch * args.tokens * nheads * v.chunk * bits // 8,
            "output_bytes": 2 * cfg.n_layer * args.batch * args.tokens * nheads * bits // 8,
            "relative_error": acc,
            "phases": phases.get(key),
        }
    dtypes = list(dict.fromkeys(v.dtype for v in variants))
    name = args.name or f"state_update_{device.type}_{args.shape}" + ("" if dtypes == ["float64"] else "_" + "_".join(dtypes)) + (
        "_triton" if "triton" in args.backends else ""
    )
    result = {
        "name": name,
        "command": portable_command("bench_state_update.py", argv),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)",
        "kernels": kernel_path(device),
        "triton_default_tile": triton_default_tile() if "triton" in args.backends else None,
        "overlap_layers": probes.state.runner.OVERLAP_LAYERS,
        "shape": args.shape,
        "lm": {k: getattr(cfg, k) for k in ("d_model", "n_layer", "d_state", "headdim", "ngroups", "chunk_size")} | {"nheads": nheads},
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "batch": args.batch,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "plain_forward_s": t_plain,
        "median_plain_s": t_plain_med,
        "reference": {"seconds_measured": t_ref, "layers_timed": len(layers), "dtype": "float64", "seconds_all_layers": t_ref_all},
        "variants": per_variant,
        "targets": {"state_over_plain_max": 1.5, "reference_over_state_min": 50.0},
        "memory": memory,
        "all_states_would_take_bytes": cfg.n_layer * args.batch * args.tokens * nheads * cfg.headdim * cfg.d_state * 4,
        "versions": versions(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
