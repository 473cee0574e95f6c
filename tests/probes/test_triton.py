"""The fused Triton kernels (probes.triton_state) give the token recurrence's distances, run on CPU by Triton's interpreter.

TRITON_INTERPRET=1 has to be set before triton decorates the kernels, so the checks run in a fresh
process (this file run as a script) and the rest of the suite never sees the interpreter. Each
case is compared with the float64 token recurrence (float32 tolerance) and with the PyTorch float32
path: on the math alone (ngroups 1 and > 1, chunk sizes that do and do not divide T, several state
tiles per head, a decay strong enough to underflow), and through models (left padding, spans that
start mid-sequence). Skipped when triton is not installed; the backend choice is tested without it.
The interpreter multiplies in float32 whatever tl.dot input precision is named, so "tf32x3" runs
here only to show the option reaches the kernels and is accepted (its accuracy is a CUDA test, in
tests/test_gpu.py); its validation is tested without triton.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# triton is no dev dependency (a 170-290 MB wheel of GPU compilers, 0.6-1 GB installed): `pip install triton` to run these.
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (pip install triton to run the kernels under its interpreter)",
)

REPO = Path(__file__).resolve().parents[2]
# float32 arithmetic: the PyTorch float32 path stays below ~2e-5 against float64 on these cases.
REL32 = 1e-4
# (name, b, T, H, P, G, N, chunk, decay, block_p x block_n tile or None[, triton precision[, chunks per carry segment]])
MATH_CASES = [
    ("groups3-chunk5", 2, 37, 6, 4, 3, 5, 5, 8, None),
    ("group1-chunk16", 2, 37, 4, 8, 1, 8, 16, 8, None),
    ("tiles6-chunk16", 1, 40, 2, 32, 1, 40, 16, 8, (16, 16)),
    ("groups2-chunk32", 1, 70, 4, 16, 2, 16, 32, 8, None),
    ("underflow-chunk16", 2, 37, 6, 4, 3, 5, 16, 400, None),
    ("tiles6-chunk16-tf32x3", 1, 40, 2, 32, 1, 40, 16, 8, (16, 16), "tf32x3"),
    # carry segments: 8 chunks in segments of 3 (the last one part padding), of 1, and tiles with segments
    ("groups3-chunk5-segments3", 2, 37, 6, 4, 3, 5, 5, 8, None, "ieee", 3),
    ("group1-chunk4-segments1", 1, 29, 2, 8, 1, 8, 4, 8, None, "ieee", 1),
    ("tiles6-chunk8-segments2", 1, 40, 2, 32, 1, 40, 8, 8, (16, 16), "ieee", 2),
    ("underflow-chunk4-segments2", 2, 37, 6, 4, 3, 5, 4, 400, None, "ieee", 2),
]


def _rel(got, want, skip_first: bool = False) -> float:
    got, want = got.double(), want.double()
    if skip_first:  # ||h_{-1}|| = 0: compared exactly instead
        got, want = got[:, 1:], want[:, 1:]
    return float(((got - want).abs() / want.clamp_min(1e-30)).max())


def _frame_rel(got, want) -> dict:
    import numpy as np

    assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0
    keys = ["clip", "layer", "head", "position"]
    assert (got[keys].to_numpy() == want[keys].to_numpy()).all()
    out = {}
    for col in ("distance", "state_norm"):
        g, w = got[col].to_numpy(), want[col].to_numpy()
        out[col] = float((np.abs(g - w) / np.maximum(w, 1e-30)).max())
    return out


def run_checks() -> dict:
    """Every case under the interpreter: relative errors of the Triton path against the float64 recurrence and the float32 torch path."""
    import torch
    import torch.nn.functional as F

    import probes
    from probes import triton_state
    from probes.state import update_stats, update_stats_ref

    assert triton_state.interpreted() and triton_state.available()
    results: dict = {}
    for name, b, T, H, P, G, N, chunk, decay, tile, *rest in MATH_CASES:
        precision, segment = (rest + ["ieee", None][len(rest) :])[:2]
        g = torch.Generator().manual_seed(len(name))
        x = torch.randn(b, T, H, P, generator=g, dtype=torch.float64)
        B = torch.randn(b, T, G, N, generator=g, dtype=torch.float64)
        dt = F.softplus(torch.randn(b, T, H, generator=g, dtype=torch.float64) - 1)
        A = -torch.rand(H, generator=g, dtype=torch.float64) * decay
        ref_d, ref_n = update_stats_ref(x, B, dt, A)
        f32 = [v.float() for v in (x, B, dt, A)]
        if tile is None and segment is None:
            d, n = update_stats(*f32, chunk, backend="triton", triton_precision=precision)
        else:
            tile = tile or (None, None)
            d, n = triton_state.update_stats_triton(
                *f32, chunk, block_p=tile[0], block_n=tile[1], precision=precision, segment_chunks=segment
            )
        td, tn = update_stats(*f32, chunk, backend="torch")
        results[name] = {
            "distance_vs_ref": _rel(d, ref_d),
            "norm_vs_ref": _rel(n, ref_n, skip_first=True),
            "distance_vs_torch32": _rel(d, td),
            "norm_vs_torch32": _rel(n, tn, skip_first=True),
            "first_norm_is_zero": bool((n[:, 0] == 0).all()),
            "dtype": str(d.dtype),
        }

    from tests.support.models import tiny_hf, tiny_lm

    ids = torch.randint(0, 64, (3, 50), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 50, dtype=torch.long)
    mask[1, :9] = 0  # left padding
    spans = torch.tensor([[0, 50], [11, 50], [4, 20]])
    models = {  # name: (model, inputs, span, chunk, layer, precision); one layer each keeps the interpreter quick
        "mamba_lm-groups2-left-padding-spans": (tiny_lm(ngroups=2), {"input_ids": ids, "attention_mask": mask}, spans, 16, 1, "ieee"),
        "mamba_lm-group1-chunk12": (tiny_lm(ngroups=1), {"input_ids": ids[:2]}, spans[:2], 12, 0, "ieee"),
        "hf-mamba2-left-padding-mid-span": (
            tiny_hf(n_groups=1),
            {"input_ids": ids[:2], "attention_mask": mask[:2]},
            (12, 47),
            8,
            1,
            "ieee",
        ),
        "mamba_lm-group1-chunk12-tf32x3": (tiny_lm(ngroups=1), {"input_ids": ids[:2]}, spans[:2], 12, 0, "tf32x3"),
        # 13 chunks of 4, left padding and spans
        "mamba_lm-groups2-left-padding-chunk4": (tiny_lm(ngroups=2), {"input_ids": ids, "attention_mask": mask}, spans, 4, 0, "ieee"),
    }
    for name, (model, inputs, span, chunk, layer, precision) in models.items():
        kw = dict(layers=[layer], span=span)
        ref = probes.state_update_distance_ref(model, inputs, **kw)
        got = probes.state_update_distance(
            model, inputs, **kw, dtype=torch.float32, chunk_size=chunk, backend="triton", triton_precision=precision
        )
        torch32 = probes.state_update_distance(model, inputs, **kw, dtype=torch.float32, chunk_size=chunk, backend="torch")
        results[name] = {f"{k}_vs_ref": v for k, v in _frame_rel(got, ref).items()}
        results[name] |= {f"{k}_vs_torch32": v for k, v in _frame_rel(got, torch32).items()}

    # The fused conv + SiLU against the PyTorch one on each model's mixer, with and without padding
    from probes.models import mamba2_mixers
    from probes.state import ssm_inputs

    for name, model, inputs in [
        ("conv-mamba_lm-mask", tiny_lm(ngroups=2), {"input_ids": ids, "attention_mask": mask}),
        ("conv-hf-mask", tiny_hf(n_groups=1), {"input_ids": ids, "attention_mask": mask}),
        ("conv-mamba_lm", tiny_lm(ngroups=1), {"input_ids": ids}),
    ]:
        _, _, mixer = mamba2_mixers(model, [0])[0]
        seen = {}
        handle = mixer.in_proj.register_forward_hook(lambda m, a, out, seen=seen: seen.setdefault("z", out.detach()))
        with torch.no_grad():
            model(**inputs)
        handle.remove()
        m = inputs.get("attention_mask")
        got = ssm_inputs(mixer, seen["z"], m, torch.float32, backend="triton")
        want = ssm_inputs(mixer, seen["z"], m, torch.float64, backend="torch")
        results[name] = {f"{k}_max_abs_err": float((g.double() - w).abs().max()) for k, g, w in zip("x B dt A".split(), got, want)}
        results[name]["dtype"] = str(got[0].dtype)
    return results


@pytest.fixture(scope="module")
def interpreted_results() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("case", [c[0] for c in MATH_CASES])
def test_triton_kernels_equal_the_token_recurrence(interpreted_results, case):
    r = interpreted_results[case]
    assert r["dtype"] == "torch.float32" and r["first_norm_is_zero"]
    for key in ("distance_vs_ref", "norm_vs_ref", "distance_vs_torch32", "norm_vs_torch32"):
        assert r[key] < REL32, (key, r[key])


@needs_triton
@pytest.mark.parametrize(
    "case",
    [
        "mamba_lm-groups2-left-padding-spans",
        "mamba_lm-group1-chunk12",
        "hf-mamba2-left-padding-mid-span",
        "mamba_lm-group1-chunk12-tf32x3",
        "mamba_lm-groups2-left-padding-chunk4",
    ],
)
def test_triton_backend_through_models_equals_the_recurrence(interpreted_results, case):
    for key, err in interpreted_results[case].items():
        assert err < REL32, (key, err)


@needs_triton
@pytest.mark.parametrize("case", ["conv-mamba_lm-mask", "conv-hf-mask", "conv-mamba_lm"])
def test_fused_conv_equals_the_torch_inputs(interpreted_results, case):
    """The Triton conv + SiLU gives the mixer's x, B (and the same dt, A) to float32 rounding, padding masked alike."""
    r = interpreted_results[case]
    assert r["dtype"] == "torch.float32"
    for key, err in r.items():
        if key != "dtype":
            assert err < 1e-5, (key, err)


def test_backend_choice_and_refusals_name_the_reason(monkeypatch):
    import torch

    from probes import triton_state
    from probes.state import resolve_backend, update_stats

    assert resolve_backend("auto", "cpu", torch.float32) == "torch"  # auto takes the kernels on CUDA only
    assert resolve_backend("auto", "cuda", torch.float64) == "torch"
    assert resolve_backend("torch", "cuda", torch.float32) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="float32 only"):
        resolve_backend("triton", "cuda", torch.float64)
    if triton_state.available() and not triton_state.interpreted():
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            update_stats(torch.zeros(1, 4, 2, 16), torch.zeros(1, 4, 1, 16), torch.zeros(1, 4, 2), torch.zeros(2), backend="triton")
    monkeypatch.setattr(triton_state, "triton", None)  # as if triton were not installed
    assert resolve_backend("auto", "cuda", torch.float32) == "torch"
    with pytest.raises(RuntimeError, match="triton is not importable"):
        resolve_backend("triton", "cuda", torch.float32)


@pytest.mark.parametrize("bad", ["tf32", "IEEE", "fp32", ""])
def test_triton_precision_is_checked_whatever_the_backend(bad):
    """A wrong `triton_precision` is refused up front, naming the choices, on every entry point (no triton needed)."""
    import torch

    from probes import triton_state
    from probes.state import TRITON_PRECISIONS, state_updates, update_stats
    from tests.support.models import tiny_lm

    assert TRITON_PRECISIONS == ("ieee", "tf32x3")
    args = torch.zeros(1, 4, 2, 16), torch.zeros(1, 4, 1, 16), torch.zeros(1, 4, 2), torch.zeros(2)
    for backend in ("torch", "auto", "triton"):
        with pytest.raises(ValueError, match=r"triton_precision must be one of \('ieee', 'tf32x3'\)"):
            update_stats(*args, backend=backend, triton_precision=bad)
    with pytest.raises(ValueError, match="triton_precision must be one of"):
        triton_state.update_stats_triton(*args, precision=bad)
    with pytest.raises(ValueError, match="triton_precision must be one of"):
        state_updates(tiny_lm(ngroups=1), {"input_ids": torch.zeros(1, 8, dtype=torch.long)}, backend="torch", triton_precision=bad)
    # the PyTorch path takes either valid precision and ignores it
    want = update_stats(*args, backend="torch")
    for precision in TRITON_PRECISIONS:
        got = update_stats(*args, backend="torch", triton_precision=precision)
        assert all(torch.equal(g, w) for g, w in zip(got, want))


if __name__ == "__main__":
    print(json.dumps(run_checks()))
