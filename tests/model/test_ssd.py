"""The chunked SSD scan equals the token-by-token recurrence, for any length and chunk size."""

from __future__ import annotations

import pytest
import torch

from sam import ssd
from sam.model.ssd import ssd_chunked, ssd_recurrent_ref

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(
    length: int, batch: int = 2, heads: int = 4, headdim: int = 3, groups: int = 2, d_state: int = 5, dtype=torch.float64, seed: int = 0
):
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    return dict(
        x=r(batch, length, heads, headdim),
        dt=r(batch, length, heads),
        A=-(torch.rand(heads, generator=g, dtype=dtype) * 4 + 0.5),
        B=r(batch, length, groups, d_state),
        C=r(batch, length, groups, d_state),
        D=r(heads),
        dt_bias=r(heads),
        initial_state=r(batch, heads, headdim, d_state),
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("length", [1, 7, 16, 48, 50])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunked_scan_equals_recurrence_fp64(length: int, with_initial_state: bool) -> None:
    inp = _inputs(length)
    if not with_initial_state:
        inp.pop("initial_state")
    y, state = ssd_chunked(**inp, chunk_size=16, dt_softplus=True, return_final_state=True)
    y_ref, state_ref = ssd_recurrent_ref(**inp, dt_softplus=True, return_final_state=True)
    assert y.shape == y_ref.shape == inp["x"].shape
    assert _rel(y, y_ref) < 1e-10
    assert _rel(state, state_ref) < 1e-10


def test_chunked_scan_does_not_depend_on_chunk_size() -> None:
    inp = _inputs(70, groups=1, heads=3)
    outs = [ssd_chunked(**inp, chunk_size=q, dt_softplus=True, return_final_state=True) for q in (1, 4, 16, 32, 64, 128)]
    for y, s in outs[1:]:
        assert _rel(y, outs[0][0]) < 1e-12
        assert _rel(s, outs[0][1]) < 1e-12


@pytest.mark.parametrize("within_chunk", ["factored", "segment-sum"])
@pytest.mark.parametrize("length,chunk", [(8, 8), (21, 8), (40, 16)])
def test_chunked_scan_gradients_equal_recurrence_gradients(
    length: int, chunk: int, within_chunk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both within-chunk forms (exp(cs_t - m) exp(m - cs_s), or per-head segment sums) must be exact.
    monkeypatch.setitem(ssd._FACTOR_LIMIT, torch.float64, float("inf") if within_chunk == "factored" else -1.0)
    inp = _inputs(length, batch=1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    g = torch.Generator().manual_seed(3)
    w_y = torch.randn(1, length, 4, 3, generator=g, dtype=torch.float64)
    w_s = torch.randn(1, 4, 3, 5, generator=g, dtype=torch.float64)
    y, s = ssd_chunked(**leaves, chunk_size=chunk, dt_softplus=True, return_final_state=True)
    ((y * w_y).sum() + (s * w_s).sum()).backward()
    y, s = ssd_recurrent_ref(**ref_leaves, dt_softplus=True, return_final_state=True)
    ((y * w_y).sum() + (s * w_s).sum()).backward()
    for k in inp:
        assert _rel(leaves[k].grad, ref_leaves[k].grad) < 1e-10, k


def test_strong_decay_stays_exact_in_fp32() -> None:
    # Decay logs of ~-200 per chunk: factoring exp(cs_t - cs_s) would overflow fp32, so the scan
    # must switch to segment sums there and still match the fp64 recurrence.
    inp = _inputs(64, heads=4, headdim=8, d_state=16)
    inp["dt"] = inp["dt"].abs() * 3 + 1
    inp["A"] = inp["A"] * 4
    f32 = {k: v.float() for k, v in inp.items()}
    y, s = ssd_chunked(**f32, chunk_size=32, return_final_state=True)
    y_ref, s_ref = ssd_recurrent_ref(**inp, return_final_state=True)
    assert torch.isfinite(y).all()
    assert _rel(y.double(), y_ref) < 1e-5 and _rel(s.double(), s_ref) < 1e-5


def test_bf16_inputs_accumulate_in_fp32() -> None:
    inp = _inputs(200, heads=4, headdim=8, d_state=16)
    low = {k: v.to(torch.bfloat16) for k, v in inp.items()}
    y = ssd_chunked(**low, chunk_size=64, dt_softplus=True)
    assert y.dtype == torch.bfloat16
    y_ref = ssd_recurrent_ref(**{k: v.double() for k, v in low.items()}, dt_softplus=True)
    assert _rel(y.double(), y_ref) < 2e-2  # bf16 output rounding, not accumulated error


def test_padded_tail_leaves_final_state_unchanged() -> None:
    inp = _inputs(37)
    _, s37 = ssd_chunked(**inp, chunk_size=32, dt_softplus=True, return_final_state=True)
    _, s37_one_chunk = ssd_chunked(**inp, chunk_size=37, dt_softplus=True, return_final_state=True)
    assert _rel(s37, s37_one_chunk) < 1e-12


def test_bad_shapes_raise_naming_the_argument() -> None:
    inp = _inputs(8)
    inp["dt"] = inp["dt"][:, :5]
    with pytest.raises(ValueError, match="dt must be"):
        ssd_chunked(**inp, chunk_size=4)
    inp = _inputs(8)
    inp["initial_state"] = inp["initial_state"][:, :2]
    with pytest.raises(ValueError, match="initial_state"):
        ssd_chunked(**inp, chunk_size=4)
