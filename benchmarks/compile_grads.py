"""Eager vs torch.compile gradients of the smoke SAM's stage-4 step, per parameter, for several settings.

    python benchmarks/compile_grads.py OUTDIR [setting ...]     (default: every setting, in order)
    python benchmarks/compile_grads.py --summary RESULTS.json    (Markdown table of collected runs)

For each setting in SETTINGS (Mamba-2 kernels torch|triton; mamba_ssm kernels opaque to Dynamo or
traced; fp32 or bf16 autocast; LoRA dropout; Inductor's fallback_random; CUDA-graph replay; SDPA
backend) it takes one forward + backward of the same batch with the eager model twice (the second
run is the noise floor) and once with `sam.train.compile_blocks` (the trainer's `train.compile`),
and writes each trainable parameter's relative gradient error to OUTDIR/diag_compile.json.
LoRA B is set non-zero (every LoRA matrix then gets a gradient) except in the `-B0` settings,
which keep peft's zero init as a fresh stage does. `DIAG_LIMIT_S` (seconds) stops starting new
settings. A diagnostic of `train.compile` (see sam/train/speed.py), not part of the library.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sam.config import preset  # noqa: E402
from sam.model import SAM  # noqa: E402
from sam.model.mamba2 import Mamba2Mixer, _kernels, opaque_kernels  # noqa: E402
from sam.prompt import IGNORE_INDEX  # noqa: E402
from sam.tokenizer import train_bpe  # noqa: E402
from sam.train import CudaGraphs, autocast, compile_blocks, uncompile_blocks  # noqa: E402


def summarize(path: str) -> str:
    """A Markdown table of a results file holding {"runs": [diag_compile.json contents + "command"]}."""
    data = json.loads(Path(path).read_text())
    lines = [
        "# Eager vs compiled gradients (smoke SAM, stage 4, one forward + backward)",
        "",
        "| setting | device | loss eager / compiled | grad norm eager / compiled | params with rel. error > 1e-2 | worst parameter (rel. error) | eager repeat |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in data["runs"]:
        for name, r in run["settings"].items():
            if "rows" not in r:
                lines.append(f"| {name} | {run['device']} | {r.get('error', r.get('skipped', ''))[:120]} | | | | |")
                continue
            worst = r["rows"][0]
            lines.append(
                f"| {name} | {run['device']} | {r['eager_loss']:.6f} / {r['test_loss']:.6f} | {r['eager_norm']:.5f} / {r['test_norm']:.5f} "
                f"| {r['n_rel_gt_1e-2']} / {r['n_params']} | {worst[0]} ({worst[1]:.2e}) | {r['eager_repeat_max_rel']:.1e} |"
            )
    lines += ["", "Commands: " + "; ".join(f"`{run['command']}`" for run in data["runs"]), ""]
    return "\n".join(lines)


if len(sys.argv) == 3 and sys.argv[1] == "--summary":
    print(summarize(sys.argv[2]))
    sys.exit(0)

T0 = time.time()
LIMIT = float(os.environ.get("DIAG_LIMIT_S", "480"))
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)

# name: kernels (torch|triton), wrap (disable|traced), precision, lora dropout, fallback_random, graph, compile
S = dict
SETTINGS = {
    "torch-fp32-sdpa-math": S(kernels="torch", prec="fp32", drop=0.0, sdpa="MATH"),
    "torch-fp32-sdpa-efficient": S(kernels="torch", prec="fp32", drop=0.0, sdpa="EFFICIENT_ATTENTION"),
    "triton-bf16-drop-B0": S(kernels="triton", prec="bf16", drop=0.05, b0=True),
    "triton-bf16": S(kernels="triton", prec="bf16", drop=0.0),
    "triton-bf16-drop-B0-fallbackrandom": S(kernels="triton", prec="bf16", drop=0.05, b0=True, fallback_random=True),
    "torch-bf16": S(kernels="torch", prec="bf16", drop=0.0),
    "triton-bf16-traced": S(kernels="triton", prec="bf16", drop=0.0, wrap="traced"),
    "triton-fp32": S(kernels="triton", prec="fp32", drop=0.0),
    "triton-bf16-graph": S(kernels="triton", prec="bf16", drop=0.0, graph=True),
    "triton-bf16-drop": S(kernels="triton", prec="bf16", drop=0.05),
    "torch-fp32": S(kernels="torch", prec="fp32", drop=0.0),
    "torch-fp32-drop": S(kernels="torch", prec="fp32", drop=0.05),
    "triton-fp32-traced": S(kernels="triton", prec="fp32", drop=0.0, wrap="traced"),
}

exp = preset("smoke")
stage = next(s for s in exp.train.stages if s.name == "stage4")
with tempfile.TemporaryDirectory() as d:
    TOK = train_bpe(["a dog barks", "a door slams", "rain falls", "what do you hear?"] * 20, 300, d)
exp.model.lm.vocab_size = len(TOK)
AUDIO = exp.model.audio
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

BASE: dict = {}


def base(drop: float, b0: bool = False) -> SAM:
    if (drop, b0) not in BASE:
        cfg = copy.deepcopy(exp.model)
        cfg.lora.dropout = drop
        torch.manual_seed(0)
        m = SAM(cfg, tokenizer=TOK)
        # LoRA B starts at zero, so the LoRA branch would give lora_A no gradient and make lora_B's
        # gradient the only one that depends on dropout: give B small values so both are exercised.
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n and not b0:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        BASE[(drop, b0)] = m.to(DEV)
    return BASE[(drop, b0)]


g = torch.Generator().manual_seed(1)
W = 32  # text width; row 1 right-padded by 5 tokens as collate makes it
ids = torch.randint(0, len(TOK), (4, W), generator=g)
labels = ids.clone()
labels[:, : W // 2] = IGNORE_INDEX
mask = torch.ones_like(ids)
mask[1, W - 5 :] = 0
labels[1, W - 5 :] = IGNORE_INDEX
BATCH = {
    "fbank": torch.randn(4, AUDIO.target_frames, AUDIO.num_mel_bins, generator=g),
    "input_ids": ids,
    "labels": labels,
    "attention_mask": mask,
}
BATCH = {k: v.to(DEV) for k, v in BATCH.items()}

KERN = _kernels()


def run(model: SAM, s: dict, compiled: bool) -> tuple[float, dict[str, torch.Tensor]]:
    trainable = model.set_trainable(list(stage.trainable))
    model.train()
    for p in trainable:
        p.grad = None
    train = copy.deepcopy(exp.train)
    train.precision = s["prec"]
    torch.manual_seed(123)  # same dropout masks for every eager run
    if s.get("sdpa"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, s["sdpa"])]):
            return _run(model, s, trainable, train)
    return _run(model, s, trainable, train)


def _run(model, s, trainable, train):
    if s.get("graph"):
        graphs = CudaGraphs(model, trainable, train, DEV)
        loss, _, _ = graphs(BATCH, 1.0)  # capture (warm-ups restore .grad), then replay once
        loss = float(loss)
    else:
        with autocast(DEV, s["prec"]):
            loss, _ = model(BATCH)
        loss.backward()
        loss = float(loss)
    names = {id(p): n for n, p in model.named_parameters()}
    return loss, {names[id(p)]: p.grad.detach().float().clone() for p in trainable if p.grad is not None}


def _cpu_compile(model):  # the same regional compile on CPU (the trainer refuses CPU)
    from sam.model.connector import Connector
    from sam.model.encoder import Block as EncoderBlock
    from sam.model.lm import Block as LMBlock

    done = []
    for m in model.modules():
        if isinstance(m, (EncoderBlock, LMBlock, Connector)):
            m.forward = torch.compile(m.forward)
            done.append(m)
    return done


def compare(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[tuple[str, float, float, float]]:
    rows = []
    for n, r in ref.items():
        q = got.get(n)
        if q is None:
            rows.append((n, float("nan"), float(r.norm()), float("nan")))
            continue
        rows.append((n, float((q - r).norm() / r.norm().clamp_min(1e-30)), float(r.norm()), float(q.norm())))
    for n in got.keys() - ref.keys():
        rows.append((n, float("nan"), float("nan"), float(got[n].norm())))
    return rows


def total_norm(gr: dict[str, torch.Tensor]) -> float:
    return float(torch.stack([v.norm() for v in gr.values()]).norm())


results = {
    "device": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu",
    "torch": torch.__version__,
    "kernels_error": KERN.error,
    "settings": {},
}
wanted = sys.argv[2:] or list(SETTINGS)
for name in wanted:
    s = SETTINGS[name]
    if time.time() - T0 > LIMIT:
        results["settings"][name] = {"skipped": "time limit"}
        continue
    if s["kernels"] == "triton" and (DEV.type != "cuda" or KERN.chunk_scan is None):
        results["settings"][name] = {"skipped": "no triton kernels"}
        continue
    t = time.time()
    Mamba2Mixer.kernels = s["kernels"]
    torch._inductor.config.fallback_random = bool(s.get("fallback_random"))
    rec: dict = {"spec": s}
    try:
        eager = copy.deepcopy(base(s["drop"], s.get("b0", False)))
        opaque_kernels(False)
        l0, g0 = run(eager, {**s, "graph": False}, False)
        l1, g1 = run(eager, {**s, "graph": False}, False)  # repeat: the noise floor (atomics)
        rec["eager_loss"], rec["eager_norm"] = l0, total_norm(g0)
        rec["eager_repeat_max_rel"] = max(r[1] for r in compare(g0, g1))
        model = copy.deepcopy(base(s["drop"], s.get("b0", False)))
        done = []
        if s.get("compile", True):
            done = compile_blocks(model, torch.device("cuda")) if DEV.type == "cuda" else _cpu_compile(model)
            opaque_kernels(s.get("wrap") != "traced")
        lc, gc = run(model, s, True)
        rec["test_loss"], rec["test_norm"] = lc, total_norm(gc)
        rows = sorted(compare(g0, gc), key=lambda r: -r[1] if r[1] == r[1] else -1e9)
        rec["n_params"] = len(rows)
        rec["n_rel_gt_1e-2"] = sum(1 for r in rows if not r[1] <= 1e-2)
        rec["max_rel"] = rows[0][1] if rows else None
        rec["rows"] = rows
        uncompile_blocks(done)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
        rec["traceback"] = traceback.format_exc()[-4000:]
    finally:
        opaque_kernels(False)
        torch._dynamo.reset()
        Mamba2Mixer.kernels = ""
    rec["seconds"] = time.time() - t
    results["settings"][name] = rec
    msg = rec.get("error") or (
        f"loss {rec['eager_loss']:.6f}/{rec['test_loss']:.6f} norm {rec['eager_norm']:.5f}/{rec['test_norm']:.5f} "
        f"max rel {rec['max_rel']:.2e} (eager repeat {rec['eager_repeat_max_rel']:.1e}), {rec['n_rel_gt_1e-2']}/{rec['n_params']} params > 1e-2"
    )
    print(f"[{time.time() - T0:5.0f}s] {name}: {msg}", flush=True)
    if "rows" in rec:
        for r in rec["rows"][:8]:
            print(f"      {r[1]:.2e}  |ref| {r[2]:.3e} |got| {r[3]:.3e}  {r[0]}", flush=True)
    (OUT / "diag_compile.json").write_text(json.dumps(results, indent=1))
print("done", time.time() - T0)
