"""State-update distances are exact: the chunked closed form equals the token-by-token recurrence.

Checked on the math alone, on transformers' Mamba2ForCausalLM, on sam.lm.MambaLM with ngroups > 1
(also through a peft LoRA wrapper on in_proj) and on SAM when sam.model exists, with spans that
start mid-sequence and left padding; and the recomputed SSM inputs reproduce the models' own final
states, so the numbers describe the model's real states.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import probes
from probes.state import COLUMNS, ssm_inputs, update_stats, update_stats_ref
from tests.support.models import tiny_hf, tiny_lm, tiny_sam_and_batch

pytestmark = pytest.mark.usefixtures("one_thread")

REL = 1e-8


def assert_frames_match(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(got.columns) == COLUMNS and len(got) == len(ref) > 0
    pd.testing.assert_frame_equal(got[["clip", "layer", "head", "position"]], ref[["clip", "layer", "head", "position"]])
    for col in ("distance", "state_norm"):
        err = np.abs(got[col].to_numpy() - ref[col].to_numpy()) / np.maximum(ref[col].to_numpy(), 1e-300)
        assert err.max() < REL, f"{col}: max relative error {err.max():.3g}"
    assert got.relative.isna().equals(ref.relative.isna())


@pytest.mark.parametrize("chunk,decay", [(1, 8), (5, 8), (16, 8), (64, 8), (16, 400)])
def test_chunked_update_stats_equal_the_token_recurrence(chunk, decay):
    """decay=400 drives a chunk's log-decay below -600: the overflow-safe branch."""
    g = torch.Generator().manual_seed(chunk)
    b, T, H, P, G, N = 2, 37, 6, 4, 3, 5
    x = torch.randn(b, T, H, P, generator=g, dtype=torch.float64)
    B = torch.randn(b, T, G, N, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(b, T, H, generator=g, dtype=torch.float64) - 1)
    A = -torch.rand(H, generator=g, dtype=torch.float64) * decay
    ref_d, ref_n = update_stats_ref(x, B, dt, A)
    d, n = update_stats(x, B, dt, A, chunk)
    assert ((d - ref_d).abs() / ref_d).max() < REL
    assert ((n - ref_n).abs()[:, 1:] / ref_n[:, 1:]).max() < REL
    assert (n[:, 0] == 0).all()


@pytest.mark.parametrize("scan_block", [1, 3, 64])
def test_blocked_chunk_scan_equals_the_token_recurrence(scan_block):
    """The carry between chunks, solved a block of chunks per step, for blocks that split, match and exceed 37 chunks."""
    g = torch.Generator().manual_seed(scan_block)
    b, T, H, P, G, N = 2, 37, 4, 3, 2, 5
    x = torch.randn(b, T, H, P, generator=g, dtype=torch.float64)
    B = torch.randn(b, T, G, N, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(b, T, H, generator=g, dtype=torch.float64) - 1)
    A = -torch.rand(H, generator=g, dtype=torch.float64) * 8
    ref_d, ref_n = update_stats_ref(x, B, dt, A)
    d, n = update_stats(x, B, dt, A, 1, scan_block)
    assert ((d - ref_d).abs() / ref_d).max() < REL
    assert ((n - ref_n).abs()[:, 1:] / ref_n[:, 1:]).max() < REL


def test_default_arithmetic_is_float64_on_cpu_and_float32_on_gpus():
    from probes.state import default_chunk_size, default_dtype

    assert default_dtype("cpu") == torch.float64 and default_dtype(torch.device("cuda", 0)) == torch.float32
    assert default_chunk_size("cpu") == 32 and default_chunk_size("cuda") == 64


def test_hf_mamba2_distances_equal_the_recurrence_with_a_mid_sequence_span():
    model = tiny_hf()
    inputs = {"input_ids": torch.randint(0, 64, (2, 45), generator=torch.Generator().manual_seed(1))}
    got = probes.state_update_distance(model, inputs, span=(7, 40))
    assert_frames_match(got, probes.state_update_distance_ref(model, inputs, span=(7, 40)))
    assert got.position.min() == 1 and got.position.max() == 32  # adjacent pairs inside [7, 40)
    assert len(got) == 2 * 2 * 8 * 32


def test_hf_mamba2_left_padding_is_honoured_and_gives_the_unpadded_distances():
    model = tiny_hf()
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :6] = 0
    padded = probes.state_update_distance(model, {"input_ids": ids, "attention_mask": mask})
    assert_frames_match(padded, probes.state_update_distance_ref(model, {"input_ids": ids, "attention_mask": mask}))
    alone = probes.state_update_distance(model, {"input_ids": ids[1:, 6:]})
    row = padded[padded["clip"] == 1].reset_index(drop=True)
    assert len(row) == len(alone)
    np.testing.assert_allclose(row.distance, alone.distance, rtol=1e-4, atol=1e-7)  # fp32 model: padding vs none


def test_mamba_lm_with_groups_distances_equal_the_recurrence():
    model = tiny_lm(ngroups=2)
    inputs = {"input_ids": torch.randint(0, 64, (3, 50), generator=torch.Generator().manual_seed(3))}
    spans = torch.tensor([[0, 50], [11, 50], [4, 20]])
    got = probes.state_update_distance(model, inputs, layers=[1], span=spans, chunk_size=8)
    assert_frames_match(got, probes.state_update_distance_ref(model, inputs, layers=[1], span=spans))
    assert set(got.layer) == {1} and got.groupby("clip").position.max().tolist() == [49, 38, 15]


def test_lora_wrapped_in_proj_is_hooked_with_its_adapter():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_lm(), LoraConfig(r=4, lora_alpha=8, target_modules=["in_proj", "out_proj"], init_lora_weights=False)).eval()
    inputs = {"input_ids": torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(4))}
    got = probes.state_update_distance(model, inputs)
    assert_frames_match(got, probes.state_update_distance_ref(model, inputs))
    with model.disable_adapter():
        plain = probes.state_update_distance(model, inputs)
    assert not np.allclose(got.distance, plain.distance)  # the adapter's output is what was hooked


def _final_states(model, inputs, layer_path: str) -> torch.Tensor:
    """Our recomputed inputs stepped to the end, in fp64: the final SSM state of that mixer."""
    out, cache = probes.run_with_cache(model, inputs, layer_path + ".in_proj")
    mixer = dict(model.named_modules())[layer_path]
    x, B, dt, A = ssm_inputs(mixer, cache[layer_path + ".in_proj"], inputs.get("attention_mask"))
    return update_stats_ref(x, B, dt, A, return_state=True)[2]


def test_recomputed_ssm_inputs_reproduce_the_models_own_final_states():
    ids = torch.randint(0, 64, (2, 33), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 33, dtype=torch.long)
    mask[0, :5] = 0
    lm = tiny_lm()
    cache = lm.allocate_cache(2)
    with torch.no_grad():
        lm(input_ids=ids, attention_mask=mask, cache=cache)
    for i in range(2):
        ours = _final_states(lm, {"input_ids": ids, "attention_mask": mask}, f"backbone.layers.{i}.mixer")
        torch.testing.assert_close(ours.float(), cache.ssm_states[i], rtol=1e-4, atol=1e-6)
    hf = tiny_hf()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, use_cache=True)
    for i in range(2):
        ours = _final_states(hf, {"input_ids": ids, "attention_mask": mask}, f"backbone.layers.{i}.mixer")
        torch.testing.assert_close(ours.float(), out.cache.get_recurrent_state(i).float(), rtol=1e-4, atol=1e-6)


def test_sam_audio_span_distances_equal_the_recurrence():
    model, batch = tiny_sam_and_batch()
    got = probes.state_update_distance(model, batch)
    assert_frames_match(got, probes.state_update_distance_ref(model, batch))
    n_audio = model.num_audio_tokens()
    assert model.audio_span(batch).tolist() == [[0, n_audio]] * 2
    assert got.groupby("clip").position.agg(["min", "max"]).values.tolist() == [[1, n_audio - 1]] * 2
    mid = probes.state_update_distance(model, batch, layers=[0], span=(5, n_audio + 4))  # a span into the prompt
    assert_frames_match(mid, probes.state_update_distance_ref(model, batch, layers=[0], span=(5, n_audio + 4)))


def test_non_mamba2_models_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="no Mamba backbone"):
        probes.state_update_distance(torch.nn.Linear(3, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="out of range"):
        probes.state_update_distance(tiny_lm(), {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, layers=[5])
    with pytest.raises(ValueError, match="outside"):
        probes.state_update_distance(tiny_lm(), {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, span=(2, 9))
