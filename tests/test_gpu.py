"""Kernel-path tests: run only where CUDA is available (skipped on CPU machines and in CI).

They prove that the mamba_ssm Triton path and the PyTorch path are the same model: same outputs
and gradients from the same parameters, exact left padding, cached decoding equal to the parallel
forward, and probes that read the states the kernel path produces.
"""
from __future__ import annotations

import copy
import tempfile

import pytest
import torch

from sam.config import MambaConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _kernels_or_skip() -> None:
    from sam.mamba2 import _kernels

    k = _kernels()
    if k.chunk_scan is None:
        pytest.skip(f"mamba_ssm kernels unavailable: {k.error}")


def _cfg(**kw: int) -> MambaConfig:
    base = dict(d_model=256, n_layer=3, vocab_size=512, d_state=64, headdim=32, ngroups=2, chunk_size=64)
    base.update(kw)
    return MambaConfig(**base)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm().clamp_min(1e-30))


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def test_kernel_path_equals_torch_path_forward_and_backward() -> None:
    _kernels_or_skip()
    from sam.lm import MambaLM

    torch.manual_seed(0)
    fast = MambaLM(_cfg()).cuda()
    slow = copy.deepcopy(fast)
    for m in slow.modules():
        if hasattr(m, "kernels"):
            m.kernels = "torch"
    ids = torch.randint(0, 512, (2, 300), device="cuda")
    lf, ls = fast(ids).logits, slow(ids).logits
    # mamba_ssm's Triton dot products run in TF32 even for fp32 inputs: ~1e-4 relative is their floor.
    assert _rel(lf, ls) < 1e-3
    lf.square().mean().backward()
    ls.square().mean().backward()
    for (name, pf), (_, ps) in zip(fast.named_parameters(), slow.named_parameters()):
        assert _rel(pf.grad, ps.grad) < 1e-2, name


def test_kernel_path_left_padding_is_exact() -> None:
    _kernels_or_skip()
    from sam.lm import MambaLM

    torch.manual_seed(1)
    lm = MambaLM(_cfg()).cuda().eval()
    ids = torch.randint(0, 512, (1, 100), device="cuda")
    padded = torch.cat([torch.zeros(1, 37, dtype=torch.long, device="cuda"), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 37, device="cuda"), torch.ones(1, 100, device="cuda")], dim=1).long()
    with torch.no_grad():
        ref = lm(ids).logits
        out = lm(padded, attention_mask=mask).logits[:, 37:]
    assert _rel(out, ref) < 1e-4


def test_kernel_path_step_decoding_equals_parallel_forward() -> None:
    _kernels_or_skip()
    from sam.lm import MambaLM

    torch.manual_seed(2)
    lm = MambaLM(_cfg()).cuda().eval()
    ids = torch.randint(0, 512, (2, 80), device="cuda")
    with torch.no_grad():
        full = lm(ids).logits
        cache = lm.allocate_cache(2, device="cuda")
        prefix = lm(ids[:, :50], cache=cache).logits
        steps = torch.stack([lm.step(ids[:, t], cache) for t in range(50, 80)], dim=1)
    assert _rel(prefix, full[:, :50]) < 1e-4
    assert _rel(steps, full[:, 50:]) < 1e-4


def test_kernel_path_bf16_autocast_matches_fp32_torch_path() -> None:
    _kernels_or_skip()
    from sam.lm import MambaLM

    torch.manual_seed(3)
    lm = MambaLM(_cfg(n_layer=4)).cuda().eval()
    ref = copy.deepcopy(lm)
    for m in ref.modules():
        if hasattr(m, "kernels"):
            m.kernels = "torch"
    ids = torch.randint(0, 512, (2, 512), device="cuda")
    with torch.no_grad():
        want = ref(ids).logits
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = lm(ids).logits
    assert _rel(got, want) < 3e-2


def test_state_update_distance_on_kernel_model_equals_recurrence() -> None:
    _kernels_or_skip()
    import probes
    from probes.state import state_update_distance_ref
    from sam.lm import MambaLM

    torch.manual_seed(4)
    lm = MambaLM(_cfg(n_layer=2)).cuda().eval()
    ids = torch.randint(0, 512, (2, 120), device="cuda")
    span = torch.tensor([[10, 110], [30, 120]], device="cuda")
    ref = state_update_distance_ref(lm, {"input_ids": ids}, span=span)
    keys = ["clip", "layer", "head", "position"]
    ref = ref.sort_values(keys).reset_index(drop=True)
    # float64: the closed form is exact (the forward's own bf16/TF32 rounding is shared by both);
    # the GPU default (float32, 64-token chunks) is a probe-grade approximation of it.
    for dtype, bound in ((torch.float64, 1e-6), (None, 1e-4)):
        kwargs = {} if dtype is None else {"dtype": dtype}
        fast = probes.state_update_distance(lm, {"input_ids": ids}, span=span, **kwargs)
        fast = fast.sort_values(keys).reset_index(drop=True)
        assert len(fast) == len(ref) > 0
        err = ((fast["distance"] - ref["distance"]).abs() / ref["distance"].abs().clip(lower=1e-30)).max()
        assert err < bound, (dtype, err)


def test_sam_generate_on_cuda_batched_equals_single() -> None:
    from sam.config import preset
    from sam.model import SAM
    from sam.tokenizer import train_bpe

    cfg = preset("smoke").model
    with tempfile.TemporaryDirectory() as d:
        tok = train_bpe(["a dog barks", "a door slams", "rain falls", "what do you hear?"] * 20, 300, d)
    cfg.lm.vocab_size = len(tok)
    torch.manual_seed(5)
    model = SAM(cfg, tokenizer=tok).cuda()
    fb = torch.randn(3, cfg.audio.target_frames, cfg.audio.num_mel_bins, device="cuda")
    prompts = ["what do you hear?", "describe the sound", "is there rain?"]
    model.eval()
    with torch.no_grad():
        batched = model.generate(fb, prompts, max_new_tokens=8)
        single = [model.generate(fb[i : i + 1], [p], max_new_tokens=8)[0] for i, p in enumerate(prompts)]
    assert batched == single


def test_cuda_graphed_train_step_equals_eager() -> None:
    """train.cuda_graphs (forward + backward replayed as CUDA graphs over text right-padded to a
    16-token bucket) gives the eager step's losses, gradient norms and token counts."""
    _kernels_or_skip()
    from sam.config import preset
    from sam.model import SAM
    from sam.prompt import IGNORE_INDEX
    from sam.tokenizer import train_bpe
    from sam.train import CudaGraphs, Dist, make_optimizer, train_step

    exp = preset("smoke")
    exp.model.lora.dropout = 0.0  # the two runs draw dropout masks differently
    exp.train.precision = "fp32"
    stage = next(s for s in exp.train.stages if s.name == "stage4")  # encoder + connector + lora
    with tempfile.TemporaryDirectory() as d:
        tok = train_bpe(["a dog barks", "a door slams", "rain falls", "what do you hear?"] * 20, 300, d)
    exp.model.lm.vocab_size = len(tok)
    torch.manual_seed(0)
    ref = SAM(exp.model, tokenizer=tok).cuda()
    fast = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(1)
    audio = exp.model.audio

    def batch(width: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, len(tok), (2, width), generator=g)
        labels = ids.clone()
        labels[:, : width // 2] = IGNORE_INDEX
        mask = torch.ones_like(ids)
        mask[1, width - 3 :] = 0  # right padding, as collate makes it
        labels[1, width - 3 :] = IGNORE_INDEX
        return {"fbank": torch.randn(2, audio.target_frames, audio.num_mel_bins, generator=g), "input_ids": ids, "labels": labels, "attention_mask": mask}

    batches = [batch(9), batch(13), batch(9)]
    dist = Dist(device=torch.device("cuda"))
    runs = []
    for model, fast_path in ((ref, False), (fast, True)):
        trainable = model.set_trainable(list(stage.trainable))
        model.train()
        opt, sched = make_optimizer(model, stage, exp.train, dist.device)
        graphs = CudaGraphs(model, trainable, exp.train, dist.device) if fast_path else None
        runs.append([train_step(model, [b], opt, sched, trainable, exp.train, dist, False, None, graphs) for b in batches])
    assert graphs is not None and len(graphs.graphs) == 1  # widths 9 and 13 share the 16-token bucket
    for (loss_e, norm_e, tok_e), (loss_f, norm_f, tok_f) in zip(*runs):
        assert tok_e == tok_f
        assert abs(loss_f - loss_e) <= 1e-3 * abs(loss_e)
        assert abs(norm_f - norm_e) <= 1e-3 * abs(norm_e)
