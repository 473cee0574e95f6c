"""Training throughput of SAM: audio clips/s, LM tokens/s and MFU against the measured matmul peak.

Times `sam.train.train_step` (the trainer's own step: autocast, loss weighting, clipping, AdamW)
on real corpus batches collated once up front, so data loading is not measured. FLOPs per step are
counted with `torch.utils.flop_counter.FlopCounterMode` on the pure-PyTorch kernel path (the
Triton SSD kernels are custom ops the counter cannot see), with the LM head on the labelled
positions only, the FLOPs a step needs (`count_flops`; the count with the head on every position is
reported beside it); the same step is then timed on the fastest path. The peak is a large bf16
matmul (fp32 on CPU) measured in the same process.

    python benchmarks/bench_train.py                                   # cpu preset, 2 cores
    python benchmarks/bench_train.py --device cuda --lm 780m --encoder base --preset gpu
    python benchmarks/bench_train.py --device cuda ... --variants eager,graph --profile
    python benchmarks/bench_train.py --device cuda ... --variants compile-graph,compile-chunk128-graph,compile-chunk64-graph,compile-graph-labelhead,compile-chunk128-graph-labelhead

`--variants` times several ways of running the same step one after another on the same model and
batches (eager; `graph` = the trainer's `train.cuda_graphs`; torch.compile experiments), so their
ratios are side by side. `--profile` adds a torch.profiler pass per variant: GPU kernel time
per step, the share of the step the GPU is idle, kernel launches per step and the top ops.

Writes benchmarks/results/<name>.json and .md. It must never report a number it did not measure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.flops import count_flops, flops_text, matmul_peak, sync  # noqa: E402
from benchmarks.report import cell, device_name, kernel_path, key_value_markdown, portable_command, versions  # noqa: E402
from sam.config import EncoderConfig, ExperimentConfig, apply_overrides, preset  # noqa: E402
from sam.model import label_positions  # noqa: E402
from sam.model.mamba2 import set_ssd_chunk_size  # noqa: E402
from sam.prompt import IGNORE_INDEX  # noqa: E402
from sam.train import (  # noqa: E402
    CudaGraphs,
    Dist,
    audio_lm_tokens,
    compile_blocks,
    is_encoder_stage,
    make_optimizer,
    seed_all,
    train_step,
    uncompile_blocks,
)

# name -> how the step runs. compile: torch.compile mode of `sam.train.compile_blocks` (None = eager;
# "default" = the trainer's `train.compile`); kernels: Mamba-2 kernel dispatch ("" = default, "torch"
# = sam.ssd); traced: let Dynamo trace into mamba_ssm's kernels instead of keeping them opaque;
# chunk: SSD chunk length at run time (train.ssd_chunk_size; 0 = the model's); graph: replay forward
# + backward as CUDA graphs (train.cuda_graphs, sam.train.CudaGraphs); labelhead: batches carry
# label_positions, so the LM head and loss run on the labelled positions only (what the trainer's
# SAM stages do; without it, the head runs on every position). `compile`, `compile-graph`, the
# chunk and labelhead variants are what the trainer offers; the others are timing experiments.
VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {},
    "labelhead": {"labelhead": True},
    "compile": {"compile": "default"},  # train.compile=true
    "compile-torchssd": {"compile": "default", "kernels": "torch"},
    "compile-ro": {"compile": "reduce-overhead"},
    "compile-traced": {"compile": "default", "traced": True},
    "compile-traced-ro": {"compile": "reduce-overhead", "traced": True},
    "compile-chunk128": {"compile": "default", "chunk": 128},
    "graph": {"graph": True},  # train.cuda_graphs=true
    "compile-graph": {"compile": "default", "graph": True},  # train.compile=true train.cuda_graphs=true
    "compile-chunk128-graph": {"compile": "default", "chunk": 128, "graph": True},  # + train.ssd_chunk_size=128
    "compile-chunk64-graph": {"compile": "default", "chunk": 64, "graph": True},
    "compile-graph-labelhead": {"compile": "default", "graph": True, "labelhead": True},
    "compile-chunk128-graph-labelhead": {"compile": "default", "chunk": 128, "graph": True, "labelhead": True},
    "compile-chunk64-graph-labelhead": {"compile": "default", "chunk": 64, "graph": True, "labelhead": True},
}


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    from sam.model.lm import named_config

    exp = preset(args.preset, args.lm if args.lm in ("small", "medium", "large") else "small")
    if args.lm not in ("small", "medium", "large"):
        exp.model.lm = named_config(args.lm)
    if args.encoder:
        exp.model.encoder = dataclasses.replace(EncoderConfig(size=args.encoder), norm_first=exp.model.encoder.norm_first)
    # Throughput does not depend on how many scenes exist: compose only what the batches need
    # (the BPE is trained on these scenes' text too).
    exp.data.n_train, exp.data.n_valid, exp.data.n_test = 256, 16, 16
    return apply_overrides(exp, args.overrides)


def real_batches(exp: ExperimentConfig, tokenizer: Any, tasks: list[str], batch_size: int, n: int) -> list[dict[str, Any]]:
    from sam.data import build_examples
    from sam.data.dataset import SAMDataset, collate

    examples = build_examples(exp.data, "train", tasks)[: batch_size * n]
    if len(examples) < batch_size * n:
        raise SystemExit(f"only {len(examples)} training examples for tasks {tasks}; lower --batch-size or --batches")
    ds = SAMDataset(examples, exp.model.audio, tokenizer, exp.data.root)
    items = [ds[i] for i in range(len(ds))]
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def regroup(host: list[dict[str, torch.Tensor]], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """The clips of `host` re-batched `batch_size` at a time (text right-padded to a common length)."""
    width = max(int(b["input_ids"].shape[1]) for b in host)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}

    def widen(k: str, v: torch.Tensor) -> torch.Tensor:
        if k not in fill or v.shape[1] == width:
            return v
        return torch.cat([v, v.new_full((v.shape[0], width - v.shape[1]), fill[k])], dim=1)

    rows = {k: torch.cat([widen(k, b[k]) for b in host]) for k in host[0]}
    n = int(rows["fbank"].shape[0])
    if n < batch_size:
        raise SystemExit(f"--batch-size {batch_size}: only {n} clips were loaded")
    return [{k: v[i : i + batch_size] for k, v in rows.items()} for i in range(0, n - batch_size + 1, batch_size)]


def profile_steps(step: Any, first: int, n: int, seconds_per_step: float, folder: Path | None, label: str) -> dict[str, Any]:
    """torch.profiler over `n` steps: GPU kernel time per step, GPU busy share of an unprofiled step
    (`seconds_per_step`), kernel launches per step, top CUDA and CPU ops (tables written to `folder`)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for i in range(n):
            step(first + i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    gpu_us, launches = 0.0, 0
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            gpu_us += e.time_range.elapsed_us()
            launches += 1
    avg = prof.key_averages()

    def self_dev(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    top_gpu = sorted((e for e in avg if self_dev(e) > 0), key=self_dev, reverse=True)[:12]
    top_cpu = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    gpu_ms = gpu_us / n / 1e3
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for key in ("self_cuda_time_total", "self_cpu_time_total"):
            try:
                table = avg.table(sort_by=key, row_limit=40, max_name_column_width=90)
            except Exception as e:  # a sort key this torch does not know
                table = f"{type(e).__name__}: {e}"
            (folder / f"{label}_{key.split('_')[1]}.txt").write_text(table)
    return {
        "profiled_steps": n,
        "gpu_kernel_ms_per_step": gpu_ms,
        "gpu_busy_fraction": gpu_ms / 1e3 / seconds_per_step,
        "gpu_ops_per_step": launches / n,
        "top_gpu_ms_per_step": [[e.key[:120], self_dev(e) / n / 1e3, e.count / n] for e in top_gpu],
        "top_cpu_ms_per_step": [[e.key[:120], e.self_cpu_time_total / n / 1e3, e.count / n] for e in top_cpu],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"])
    ap.add_argument("--lm", default="small", help="preset LM size (small|medium|large) or a published shape (130m, 780m, 2.7b)")
    ap.add_argument("--encoder", default="", help="encoder size (tiny|small|base); default: the preset's")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stage", default="stage4", help="which stage of the preset's curriculum to time (trainable groups + tasks)")
    ap.add_argument("--batch-size", type=int, default=0, help="clips per step (default: the stage's)")
    ap.add_argument("--batches", type=int, default=4, help="distinct real batches cycled through")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernel compilation, allocator)")
    ap.add_argument("--compile", action="store_true", help="short for --variants compile (a timing experiment, see VARIANTS)")
    ap.add_argument(
        "--variants", default="", help=f"comma list timed one after another on one model: {', '.join(VARIANTS)} (default: eager)"
    )
    ap.add_argument("--profile", action="store_true", help="torch.profiler pass per variant (tables next to the result files)")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--name", default="", help="result file name (default: bench_train_<preset>_<lm>_<device>)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument(
        "--save-batches",
        default="",
        help="write the tokenizer + collated batches to this folder and stop (for a machine without the corpus)",
    )
    ap.add_argument("--load-batches", default="", help="read the tokenizer + batches written by --save-batches instead of the corpus")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    exp = build_config(args)
    stage_index = next((i for i, s in enumerate(exp.train.stages) if s.name == args.stage), None)
    if stage_index is None:
        raise SystemExit(f"--stage {args.stage}: not in the curriculum ({[s.name for s in exp.train.stages]})")
    stage = exp.train.stages[stage_index]
    if is_encoder_stage(stage):
        raise SystemExit("benchmark an LM stage (stage1..stage5); the encoder-only stage has no LM tokens")
    batch_size = args.batch_size or stage.batch_size

    from sam.model import SAM
    from sam.tokenizer import load_tokenizer
    from sam.train.runs import get_tokenizer

    if args.load_batches:
        tokenizer = load_tokenizer(Path(args.load_batches) / "tokenizer")
        host = torch.load(Path(args.load_batches) / "batches.pt")
        if args.batch_size and args.batch_size <= int(host[0]["fbank"].shape[0]):
            host = [{k: v[: args.batch_size] for k, v in b.items()} for b in host]
        elif args.batch_size:  # bigger batches than were saved: the same clips, fewer batches
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            host = regroup(host, args.batch_size, int(pad))
    else:
        tokenizer = get_tokenizer(exp, REPO / "runs")
        host = [
            {k: v for k, v in b.items() if torch.is_tensor(v)}
            for b in real_batches(exp, tokenizer, list(stage.tasks), batch_size, args.batches)
        ]
    if args.save_batches:
        folder = Path(args.save_batches)
        tokenizer.save_pretrained(str(folder / "tokenizer"))
        torch.save(host, folder / "batches.pt")
        print(f"wrote {len(host)} batches of {batch_size} clips and the tokenizer to {folder}")
        return 0
    seed_all(0)
    model = SAM(exp.model, tokenizer).to(device)
    model.set_trainable(list(stage.trainable))
    model.train()
    opt, sched = make_optimizer(model, stage, exp.train, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = [v for v in (args.variants or ("compile" if args.compile else "eager")).split(",") if v]
    bad = sorted(set(names) - set(VARIANTS))
    if bad:
        raise SystemExit(f"--variants: unknown {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    # Host batches as a DataLoader hands them over (the step moves them); only tensors, so that
    # torch.compile does not guard on Example objects.
    batches = [{k: v.pin_memory() if device.type == "cuda" else v for k, v in b.items()} for b in host]
    batch_size = int(batches[0]["fbank"].shape[0])
    dist = Dist(device=device)
    count_tokens = audio_lm_tokens(model)
    counts = count_flops(model, batches[0], lambda b: train_step(model, [b], opt, sched, trainable, exp.train, dist, False, count_tokens))
    flops = counts["needed"]
    # The labelhead variants' batches: label_positions as the trainer's collate adds them.
    labelled = [{**b, "label_positions": label_positions(b["labels"])} for b in host]
    labelled = [{k: v.pin_memory() if device.type == "cuda" else v for k, v in b.items()} for b in labelled]

    measured: dict[str, dict[str, Any]] = {}
    profile_dir = Path(args.out) / f"{args.name or _default_name(args, device)}_profile" if args.profile else None
    from sam.model.mamba2 import Mamba2Mixer, opaque_kernels

    for name in names:
        spec = VARIANTS[name]
        mode = spec.get("compile")
        if (mode or spec.get("graph")) and device.type != "cuda":
            raise SystemExit(f"--variants {name}: compiled and graphed variants are for CUDA")
        previous = getattr(Mamba2Mixer, "kernels", "")
        Mamba2Mixer.kernels = spec.get("kernels", "")
        set_ssd_chunk_size(model, spec.get("chunk", 0))  # train.ssd_chunk_size
        steps = labelled if spec.get("labelhead") else batches
        compiled = compile_blocks(model, device, mode=None if mode == "default" else mode) if mode else []
        # Compiled variants run mamba_ssm's kernels between compiled regions unless "traced".
        opaque_kernels(bool(mode) and not spec.get("traced"))
        graphs = CudaGraphs(model, trainable, exp.train, device) if spec.get("graph") else None  # train.cuda_graphs

        def step(i: int, steps: list = steps, graphs: CudaGraphs | None = graphs) -> tuple[float, float, int]:
            return train_step(model, [steps[i % len(steps)]], opt, sched, trainable, exp.train, dist, False, count_tokens, graphs)

        try:
            t_warm = time.perf_counter()
            for i in range(args.warmup):
                step(i)
            sync(device)
            warm = time.perf_counter() - t_warm
            times, tokens = [], 0
            for i in range(args.steps):
                sync(device)
                t0 = time.perf_counter()
                tokens += step(i)[2]
                sync(device)
                times.append(time.perf_counter() - t0)
            # The fastest step is the machine's capability; the median shows what sharing the CPU costs.
            seconds = min(times)
            r: dict[str, Any] = {
                "seconds_per_step": seconds,
                "seconds_per_step_median": sorted(times)[len(times) // 2],
                "warmup_seconds": warm,
                "tokens_per_step": tokens / args.steps,
            }
            if args.profile:
                r["profile"] = profile_steps(step, 0, args.profile_steps, seconds, profile_dir, name)
        except Exception as e:  # a variant this machine cannot run is reported, not fatal to the others
            if len(names) == 1:
                raise
            measured[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            print(f"{name}: failed: {measured[name]['error']}", flush=True)
            continue
        finally:
            uncompile_blocks(compiled)
            Mamba2Mixer.kernels = previous
            set_ssd_chunk_size(model, 0)
            opaque_kernels(False)
            graphs = None
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache() if device.type == "cuda" else None
            if compiled:
                torch._dynamo.reset()
        measured[name] = r
        print(f"{name}: {seconds * 1e3:.1f} ms/step (median {r['seconds_per_step_median'] * 1e3:.1f}), warmup {warm:.0f} s", flush=True)
    ok = {v: m for v, m in measured.items() if "error" not in m}
    if not ok:
        raise SystemExit("every variant failed")
    best = min(ok, key=lambda v: ok[v]["seconds_per_step"])
    first = names[0] if names[0] in ok else best
    seconds, median, tokens_per_step = (measured[best][k] for k in ("seconds_per_step", "seconds_per_step_median", "tokens_per_step"))

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024, 10 if device.type == "cuda" else 5)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in trainable)
    result = {
        "benchmark": "train_throughput",
        "preset": args.preset,
        "lm": args.lm,
        "encoder": exp.model.encoder.size,
        "stage": stage.name,
        "trainable_groups": stage.trainable,
        "tasks": stage.tasks,
        "layout": exp.model.connector.layout,
        "precision": "bf16 autocast" if device.type == "cuda" or exp.train.precision == "bf16" else "fp32",
        "variant": best,
        "compile": VARIANTS[best].get("compile") is not None,
        "batch_size": batch_size,
        "steps_timed": args.steps,
        "params": n_params,
        "trainable_params": n_train,
        "seconds_per_step": seconds,
        "seconds_per_step_median": median,
        "clips_per_s": batch_size / seconds,
        "tokens_per_s": tokens_per_step / seconds,
        "tokens_per_step": tokens_per_step,
        "flops_per_step": flops,
        "flops_per_step_full_head": counts["full_head"],
        "head_positions": {"labelled": counts["labelled"], "all": counts["positions"]},
        "achieved_tflops": flops / seconds / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_kind": f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul, measured here",
        "mfu": flops / seconds / peak,
        "device": device_name(device),
        "load_average_1min": os.getloadavg()[0],  # other processes on the machine slow every number above
        "versions": versions(),
        "kernels": kernel_path(device) if not VARIANTS[best].get("kernels") else "pure PyTorch (sam.ssd)",
        # Every variant timed in this process, on the same model and batches: ratios are side by side.
        "variants": {
            v: m
            if "error" in m
            else {
                **m,
                "clips_per_s": batch_size / m["seconds_per_step"],
                "mfu": flops / m["seconds_per_step"] / peak,
                "mfu_full_head_count": counts["full_head"] / m["seconds_per_step"] / peak,
                "speedup_vs": first,
                "speedup": ok[first]["seconds_per_step"] / m["seconds_per_step"],
            }
            for v, m in measured.items()
        },
        "command": portable_command("bench_train.py", list(argv if argv is not None else sys.argv[1:])),
    }
    name = args.name or _default_name(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _default_name(args: argparse.Namespace, device: torch.device) -> str:
    return f"bench_train_{args.preset}_{args.lm}_{device.type}"


def _markdown(r: dict[str, Any]) -> str:
    rows = [
        ("device", f"{r['device']} (1-min load average {r['load_average_1min']:.1f})"),
        ("model", f"LM {r['lm']}, encoder {r['encoder']}, layout {r['layout']}"),
        ("stage", f"{r['stage']} (trains {', '.join(r['trainable_groups'])}; tasks {', '.join(r['tasks'])})"),
        ("precision / compile", f"{r['precision']} / {r['compile']}"),
        ("kernels", r["kernels"]),
        ("params (trainable)", f"{r['params'] / 1e6:.1f} M ({r['trainable_params'] / 1e6:.1f} M)"),
        ("batch", f"{r['batch_size']} clips, {r['tokens_per_step']:.0f} LM tokens"),
        ("step time (fastest / median)", f"{r['seconds_per_step'] * 1e3:.1f} / {r['seconds_per_step_median'] * 1e3:.1f} ms"),
        ("throughput (fastest step)", f"{r['clips_per_s']:.2f} clips/s, {r['tokens_per_s']:.0f} tokens/s"),
        ("FLOPs per step", flops_text(r)),
        ("achieved / peak", f"{r['achieved_tflops']:.2f} / {r['peak_tflops']:.1f} TFLOP/s ({r['peak_kind']})"),
        ("MFU", f"{100 * r['mfu']:.1f} % ({r['variant']})"),
    ]
    for v, m in r.get("variants", {}).items():
        if "error" in m:
            rows.append((f"variant {v}", f"failed: {cell(m['error'], 200)}"))
            continue
        full = f" ({100 * m['mfu_full_head_count']:.1f} % by the full-head count)" if "mfu_full_head_count" in m else ""
        rows.append(
            (
                f"variant {v}",
                f"{m['seconds_per_step'] * 1e3:.1f} / {m['seconds_per_step_median'] * 1e3:.1f} ms, "
                f"{m['clips_per_s']:.1f} clips/s, MFU {100 * m['mfu']:.1f} %{full}, {m['speedup']:.2f}x vs {m['speedup_vs']} "
                f"(warmup incl. compilation {m['warmup_seconds']:.0f} s)",
            )
        )
        p = m.get("profile")
        if p:
            top = "; ".join(f"{cell(k, 60)} {ms:.1f} ms" for k, ms, _ in (p["top_gpu_ms_per_step"] or p["top_cpu_ms_per_step"])[:5])
            rows.append(
                (
                    f"profile {v}",
                    f"GPU kernels {p['gpu_kernel_ms_per_step']:.1f} ms/step (busy {100 * p['gpu_busy_fraction']:.0f} % of the step), "
                    f"{p['gpu_ops_per_step']:.0f} GPU ops/step; top: {top}",
                )
            )
    if r.get("note"):  # a remark added to the result file after the run
        rows.append(("note", cell(r["note"], 1000)))
    rows += [
        ("versions", ", ".join(f"{k} {v}" for k, v in r["versions"].items())),
    ]
    return key_value_markdown("Training throughput", rows)


if __name__ == "__main__":
    sys.exit(main())
