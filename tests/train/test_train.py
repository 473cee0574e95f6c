"""Training on real corpus scenes (smoke sizes): the curriculum learns stage by stage (text-only LM
pretraining first) and leaves frozen groups untouched, the run cache reuses shared stages, a SIGKILLed run resumes bit for bit,
and two torchrun processes (DDP or FSDP) match one."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from sam.checkpoint import load_latest
from sam.config import ExperimentConfig, preset, save_yaml
from sam.data.corpus import prepare_corpus
from sam.train.runs import run_dir_for, stage_dirs, train_or_load
from tests.support.training import (
    base_config,
    finish_run,
    initial_weights,
    parallel_config,
    short_config,
    train_cli,
    train_corpus_bpe,
    weights,
)

REPO = Path(__file__).resolve().parents[2]
GROUP_OF = {"audio_tower.": "encoder", "connector.": "connector"}


def group(name: str) -> str:
    for prefix, g in GROUP_OF.items():
        if name.startswith(prefix):
            return g
    return "lora" if "lora_" in name else "lm"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One corpus BPE for every run here, so each run skips tokenizer training."""
    prepare_corpus(REPO / "data", progress=False)
    return train_corpus_bpe(tmp_path_factory.mktemp("tokenizer"))


def curriculum_config(tokenizer: Path) -> ExperimentConfig:
    """Every stage of the smoke curriculum, 3 steps of 2 clips each (LM pretraining: 8 steps of 4
    texts; stages mixing several tasks: 6 steps). Learning rates are raised until so few steps
    visibly move the loss."""
    exp = base_config(tokenizer)
    exp.data.n_valid = 0
    exp.train.eval_batch_size = 4
    for s in exp.train.stages:
        s.steps, s.warmup_steps, s.batch_size = 3, 1, 2
        s.lr = {"stage_lm": 1e-2, "stage0": 5e-3, "stage1": 2e-2}.get(s.name, 5e-3)
    exp.train.stages[0].steps, exp.train.stages[0].batch_size = 8, 4
    for s in exp.train.stages[4:]:  # probe batches that mix tasks: 3 steps of 2 clips at 5e-3 do not move them reliably
        s.steps, s.lr = 6, 2e-3
    return exp


@pytest.fixture(scope="module")
def curriculum(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ExperimentConfig, Path]:
    runs = tmp_path_factory.mktemp("runs")
    exp = curriculum_config(tokenizer_dir)
    train_or_load(exp, runs, device="cpu", progress=False)
    return exp, runs


def test_smoke_curriculum_each_stage_lowers_its_loss_and_keeps_frozen_groups_bit_identical(curriculum) -> None:
    exp, runs = curriculum
    dirs = stage_dirs(exp, runs, "cpu")
    assert [d.name.split("-")[1] for d in dirs] == ["stage_lm", "stage0", "stage1", "stage2", "stage3", "stage4", "stage5"]
    before = initial_weights(exp)
    for stage, folder in zip(exp.train.stages, dirs):
        summary = json.loads((folder / "final" / "summary.json").read_text())
        assert summary["probe_loss_end"] < summary["probe_loss_start"], f"{stage.name} did not lower its loss: {summary}"
        after = weights(folder / "final")
        trains = {"encoder"} if "classifier" in stage.trainable else set(stage.trainable)
        changed = {group(k) for k in after if not torch.equal(after[k], before[k])}
        assert changed == trains, f"{stage.name} trains {sorted(trains)} but changed {sorted(changed)}"
        before = after
    log = (run_dir_for(exp, runs) / "log.csv").read_text().splitlines()
    assert log[0].startswith("stage,step,loss") and len(log) == 1 + sum(s.steps for s in exp.train.stages)


def test_lm_pretraining_stage_lowers_its_text_loss_and_changes_only_the_lm(curriculum) -> None:
    exp, runs = curriculum
    folder = stage_dirs(exp, runs, "cpu")[0]
    summary = json.loads((folder / "final" / "summary.json").read_text())
    # From about ln(vocab) = 6.2 nats (random LM): the template and answer grammar are learnable fast.
    assert summary["probe_loss_start"] > 6.0 and summary["probe_loss_end"] < summary["probe_loss_start"] - 1.0, summary
    before, after = initial_weights(exp), weights(folder / "final")
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert all(group(k) == "lm" for k in changed), sorted(k for k in changed if group(k) != "lm")
    lm = [k for k in after if group(k) == "lm"]
    assert len(changed) == len(lm), f"{len(lm) - len(changed)} LM tensors did not move"


def test_run_cache_reuses_every_stage_a_later_config_shares(curriculum) -> None:
    exp, runs = curriculum
    later = curriculum_config(Path(exp.model.tokenizer))
    later.train.stages[-1].lr *= 2
    trained_before = {p.name for p in (runs / "stages").iterdir() if p.is_dir()}
    run_dir = train_or_load(later, runs, device="cpu", progress=False)
    trained_after = {p.name for p in (runs / "stages").iterdir() if p.is_dir()}
    new = trained_after - trained_before
    assert len(new) == 1 and next(iter(new)).startswith("6-stage5-")
    used = [s["dir"] for s in json.loads((run_dir / "run.json").read_text())["stages"]]
    first = [s["dir"] for s in json.loads((run_dir_for(exp, runs) / "run.json").read_text())["stages"]]
    assert used[:6] == first[:6] and used[6] != first[6]
    # A finished run is returned from the cache without touching anything.
    assert train_or_load(later, runs, device="cpu", progress=False) == run_dir


def test_part_stages_are_shared_across_lm_sizes_and_lora_ranks(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Encoder pretraining is keyed by the encoder alone: a second config with another LM width and
    LoRA rank reuses it (and retrains only the LM stages); the composed model after stage 0 holds that
    encoder and the run's own initial connector."""
    from sam.train.runs import stage_model

    first = short_config(tokenizer_dir, lora_dropout=0.0)
    first.train.stages[-1].steps = 2
    run_a = train_or_load(first, tmp_path, device="cpu", progress=False)
    second = short_config(tokenizer_dir, lora_dropout=0.0)
    second.train.stages[-1].steps = 2
    second.model.lm.d_model, second.model.lora.rank = 96, 4
    dirs_a, dirs_b = stage_dirs(first, tmp_path, "cpu"), stage_dirs(second, tmp_path, "cpu")
    assert dirs_a[1] == dirs_b[1] and dirs_a[0] != dirs_b[0] and dirs_a[2] != dirs_b[2]
    run_b = train_or_load(second, tmp_path, device="cpu", progress=False)
    trained = sorted(p.name.split("-")[1] for p in (tmp_path / "stages").iterdir() if p.is_dir())
    assert trained == ["stage0", "stage2", "stage2", "stage_lm", "stage_lm"]
    encoder = {k: v for k, v in weights(dirs_a[1] / "final").items() if k.startswith("audio_tower.")}
    after0 = stage_model(run_b, "stage0").state_dict()
    assert all(torch.equal(after0[k], v) for k, v in encoder.items())
    init_b = initial_weights(second)
    assert all(torch.equal(after0[k], v) for k, v in init_b.items() if k.startswith("connector."))
    lm_b = weights(dirs_b[0] / "final")
    assert all(torch.equal(after0[k], lm_b[k]) for k in lm_b if k.startswith("language_model.") and "lora_" not in k)
    # Stage 2 of run B started from that composition: its frozen LM base weights are run B's stage_lm.
    final_b = weights(run_b / "model")
    assert all(torch.equal(final_b[k], lm_b[k]) for k in lm_b if k.startswith("language_model.") and "lora_" not in k)
    assert (
        weights(run_a / "model")["language_model.backbone.embedding.weight"].shape[1]
        != final_b["language_model.backbone.embedding.weight"].shape[1]
    )


@pytest.fixture(scope="module")
def killed_and_resumed(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run A uninterrupted; run B SIGKILLed while it writes its step-4 checkpoint of stage2, then
    resumed by a new process. Both are separate processes with the same settings."""
    exp = short_config(tokenizer_dir, lora_dropout=0.1)  # dropout: resume must restore the RNG too
    ref_runs, runs = tmp_path_factory.mktemp("ref"), tmp_path_factory.mktemp("killed")
    config = runs / "config.yaml"
    save_yaml(exp, config)
    stage_dir = stage_dirs(exp, runs, "cpu")[2]
    reference = train_cli(config, ref_runs)
    proc = train_cli(
        config, runs, {"SAM_CHECKPOINT_FAULT": "*stage2-*/checkpoints/step-00000004.pt", "SAM_CHECKPOINT_FAULT_SECONDS": "300"}
    )
    try:
        deadline = time.time() + 240
        while not list((stage_dir / "checkpoints").glob(".step-00000004.pt.tmp-*")):
            if proc.poll() is not None:
                pytest.fail(f"training ended before the checkpoint write: {proc.communicate()[1][-2000:]}")
            assert time.time() < deadline, "training never reached the step-4 checkpoint"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
        proc.communicate()
    after_kill = load_latest(stage_dir / "checkpoints")
    partial = list((stage_dir / "checkpoints").glob(".step-00000004.pt.tmp-*"))
    resumed = finish_run(train_cli(config, runs))
    return {"after_kill": after_kill, "partial": partial, "resumed": resumed, "reference": finish_run(reference), "stage_dir": stage_dir}


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_loadable(killed_and_resumed) -> None:
    assert killed_and_resumed["partial"], "the kill did not happen inside the checkpoint write"
    state = killed_and_resumed["after_kill"]
    assert state is not None and state["step"] == 2 and state["data"] == {"epoch": 0, "offset": 8, "micro_batch": 4}
    assert not list((killed_and_resumed["stage_dir"] / "checkpoints").glob(".*.tmp-*")), "resume left the partial file behind"


def test_sigkilled_run_resumed_equals_uninterrupted_run_bit_for_bit(killed_and_resumed) -> None:
    resumed = weights(killed_and_resumed["resumed"] / "model")
    reference = weights(killed_and_resumed["reference"] / "model")
    assert resumed.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(resumed[k], reference[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    logs = [(d / "log.csv").read_text().splitlines() for d in (killed_and_resumed["resumed"], killed_and_resumed["reference"])]
    assert [row.split(",")[:4] for row in logs[0]] == [row.split(",")[:4] for row in logs[1]]  # stage, step, loss, lr


@pytest.fixture(scope="module")
def one_process(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final weights of `parallel_config` trained by one process."""
    exp = parallel_config(tokenizer_dir)
    return weights(train_or_load(exp, tmp_path_factory.mktemp("single"), device="cpu", progress=False) / "model")


def assert_matches_one_process(two: dict[str, torch.Tensor], one: dict[str, torch.Tensor]) -> None:
    assert two.keys() == one.keys()
    for k in one:
        # Float sums in another order (all-reduce of two halves); AdamW's normalized update can carry
        # that to ~1e-5 on entries whose gradients are near zero, over three stages.
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=5e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_two_torchrun_processes_match_one_process_at_the_same_global_batch(tokenizer_dir: Path, one_process, tmp_path: Path) -> None:
    exp = parallel_config(tokenizer_dir)
    config = tmp_path / "config.yaml"
    save_yaml(exp, config)
    two_dir = finish_run(train_cli(config, tmp_path / "ddp", torchrun=2))
    assert_matches_one_process(weights(two_dir / "model"), one_process)
    info = json.loads((two_dir / "run.json").read_text())
    assert info["world_size"] == 2


def test_fsdp_torchrun_matches_one_process_and_resumes_to_the_same_weights(tokenizer_dir: Path, one_process, tmp_path: Path) -> None:
    """train.fsdp=true under torchrun: two processes holding half of every parameter match one
    process; a checkpoint it writes has one process's format, and resuming from it (stage2, from
    step 2) gives the uninterrupted FSDP run's weights bit for bit."""
    exp = parallel_config(tokenizer_dir)
    exp.train.fsdp = True
    exp.train.checkpoint_every = 2  # checkpoints change no numbers
    config, runs = tmp_path / "config.yaml", tmp_path / "fsdp"
    save_yaml(exp, config)
    run_dir = finish_run(train_cli(config, runs, torchrun=2))
    uninterrupted = weights(run_dir / "model")
    assert_matches_one_process(uninterrupted, one_process)

    stage_dir = stage_dirs(exp, runs, "cpu")[2]
    state = load_latest(stage_dir / "checkpoints")
    assert state is not None and state["step"] == 2 and len(state["rng"]) == 2
    # The same format as one process's: whole plain tensors, AdamW states shaped like whole weights.
    assert all(type(v) is torch.Tensor for v in state["module"].values())
    moments = [v["exp_avg"] for v in state["optimizer"]["state"].values()]
    assert moments and all(type(m) is torch.Tensor for m in moments)
    assert {m.shape for m in moments} <= {v.shape for v in state["module"].values()}
    logged = (stage_dir / "log.jsonl").read_text().splitlines()[:2]
    shutil.rmtree(stage_dir / "final")
    shutil.rmtree(run_dir)
    resumed_dir = finish_run(train_cli(config, runs, torchrun=2))
    assert (stage_dir / "log.jsonl").read_text().splitlines()[:2] == logged, "stage2 was retrained, not resumed from step 2"
    resumed = weights(resumed_dir / "model")
    different = [k for k in uninterrupted if not torch.equal(resumed[k], uninterrupted[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_cuda_graphs_setting_changes_no_run_hash_and_needs_cuda() -> None:
    from sam.config import ConfigError, config_hash
    from sam.train import CudaGraphs, TrainConfig
    from sam.train.runs import stage_keys

    exp = preset("smoke")
    before = (config_hash(exp), stage_keys(exp))
    exp.train.cuda_graphs = True  # speed only: the same cached runs
    assert (config_hash(exp), stage_keys(exp)) == before
    with pytest.raises(ConfigError, match="CUDA"):
        CudaGraphs(torch.nn.Linear(2, 2), [], TrainConfig(), torch.device("cpu"))


def test_compile_setting_changes_no_run_hash_and_is_refused_on_cpu(tmp_path: Path) -> None:
    from sam.config import ConfigError, apply_overrides, config_hash
    from sam.train import Dist, compile_blocks, train_stage
    from sam.train.runs import stage_keys

    exp = preset("smoke")
    before = (config_hash(exp), stage_keys(exp))
    exp = apply_overrides(exp, ["train.compile=true"])  # speed only: the same cached runs
    assert exp.train.compile is True
    assert (config_hash(exp), stage_keys(exp)) == before
    with pytest.raises(ConfigError, match="train.compile: expected true/false"):
        apply_overrides(exp, ["train.compile=maybe"])
    with pytest.raises(ConfigError, match="train.compile needs a CUDA device"):
        compile_blocks(torch.nn.Linear(2, 2), torch.device("cpu"))
    # The trainer refuses it on CPU before it builds, loads or writes anything.
    with pytest.raises(ConfigError, match="train.compile needs one CUDA process"):
        train_stage(None, exp, 0, None, tmp_path / "stage", Dist())  # type: ignore[arg-type]
    assert not (tmp_path / "stage").exists()


def test_fsdp_setting_changes_no_run_hash_and_names_its_key_when_invalid() -> None:
    from sam.config import ConfigError, apply_overrides, config_hash
    from sam.train.runs import stage_keys

    exp = preset("smoke")
    before = (config_hash(exp), stage_keys(exp))
    exp = apply_overrides(exp, ["train.fsdp=true"])  # how processes share the work: the same cached runs
    assert exp.train.fsdp is True
    assert (config_hash(exp), stage_keys(exp)) == before
    with pytest.raises(ConfigError, match="train.fsdp: expected true/false"):
        apply_overrides(exp, ["train.fsdp=sharded"])


def test_train_step_rejects_a_micro_batch_without_labelled_tokens_before_running_it() -> None:
    from sam.train import Dist, train_step

    batch = {
        "input_ids": torch.zeros(1, 3, dtype=torch.long),
        "labels": torch.full((1, 3), -100),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="no labelled tokens"):
        train_step(torch.nn.Identity(), [batch], None, None, [], ExperimentConfig().train, Dist(), False)


def _tiny_sam_batch() -> tuple:
    """A smoke-preset SAM in float64 (no tokenizer, no LoRA dropout) and a right-padded random
    batch of 3 clips whose labelled spans differ per row; the stage-4 trainable groups."""
    from sam.model import SAM
    from sam.prompt import IGNORE_INDEX

    exp = preset("smoke")
    exp.model.lm.vocab_size, exp.model.lora.dropout = 300, 0.0
    torch.manual_seed(0)
    model = SAM(exp.model).double().train()
    with torch.no_grad():  # non-zero LoRA B, so every LoRA matrix gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (3, 20), generator=g)
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX
    labels[0, 8:16] = IGNORE_INDEX  # row 0: 4 labelled tokens, row 2: 12
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # right padding, as collate makes it
    labels[1, 15:] = IGNORE_INDEX
    audio = exp.model.audio
    fbank = torch.randn(3, audio.target_frames, audio.num_mel_bins, generator=g, dtype=torch.float64)
    stage = next(s for s in exp.train.stages if s.name == "stage4")
    return exp, stage, model, {"fbank": fbank, "input_ids": ids, "labels": labels, "attention_mask": mask}


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple:
    model.zero_grad(set_to_none=True)
    loss, logits = model(batch)
    loss.backward()
    return loss.detach(), logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_head_on_labelled_positions_only_gives_the_full_loss_and_gradients() -> None:
    """SAM.forward with label_positions (what the trainer's batches carry) applies the LM head only
    where labels count: the loss, every trainable gradient and the logits there equal the full
    computation's; the positions cover every labelled token, in order, padded to a 16 bucket."""
    from sam.model import label_positions
    from sam.prompt import IGNORE_INDEX
    from sam.train import WithLabelPositions, audio_lm_tokens, lm_tokens

    exp, stage, model, batch = _tiny_sam_batch()
    trainable = model.set_trainable(list(stage.trainable))
    assert trainable
    positions = label_positions(batch["labels"])
    assert positions.shape == (3, 16)  # 12 labelled tokens at most -> one bucket of 16
    labels = batch["labels"]
    for row, pos in zip(labels, positions):
        labelled = (row != IGNORE_INDEX).nonzero().flatten()
        assert pos[: len(labelled)].tolist() == labelled.tolist()
        assert bool((row[pos[len(labelled) :]] == IGNORE_INDEX).all())
    short = label_positions(labels[:, :10])  # K = 16 > 10 text tokens: the last filler repeats
    assert short.shape == (3, 16) and int(short.max()) < 10
    assert (labels[:, :10].gather(1, short) != IGNORE_INDEX).sum(1).tolist() == [0, 2, 2]
    loss, logits, grads = _loss_and_grads(model, batch)
    head_loss, head_logits, head_grads = _loss_and_grads(model, {**batch, "label_positions": positions})
    n = model.num_audio_tokens()
    assert head_logits.shape == (3, 16, logits.shape[-1])
    torch.testing.assert_close(
        head_logits, logits.gather(1, (positions + n - 1)[..., None].expand(-1, -1, logits.shape[-1])), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(head_loss, loss, rtol=1e-6, atol=0)  # the cross-entropy runs in float32
    assert grads.keys() == head_grads.keys()
    for k in grads:
        torch.testing.assert_close(head_grads[k], grads[k], rtol=1e-6, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")
    # The trainer's collate adds the positions; its token counter does not read the (partial) logits.
    collated = WithLabelPositions(lambda items: dict(items[0]))([batch])
    assert torch.equal(collated["label_positions"], positions)
    text = int(batch["attention_mask"].sum())
    assert audio_lm_tokens(model)(batch, head_logits, text) == lm_tokens(batch, logits, text) == text + 3 * n


def test_ssd_chunk_size_setting_is_speed_only_and_names_its_key_when_invalid(tmp_path: Path) -> None:
    """train.ssd_chunk_size: no config hash or run-cache change; a training step with 16-token SSD
    chunks (the CPU default is 32; these sequences are 52 tokens) gives the default step's loss,
    gradient norm and updated weights within float64 rounding; bad values name the key."""
    from sam.config import ConfigError, apply_overrides, config_hash
    from sam.model.mamba2 import Mamba2Mixer, set_ssd_chunk_size
    from sam.train import Dist, check_stages, make_optimizer, train_stage, train_step
    from sam.train.runs import stage_keys

    exp = preset("smoke")
    before = (config_hash(exp), stage_keys(exp))
    exp = apply_overrides(exp, ["train.ssd_chunk_size=128"])
    assert exp.train.ssd_chunk_size == 128
    assert (config_hash(exp), stage_keys(exp)) == before
    check_stages(exp.train)
    for bad in (-1, 8, 48):
        exp.train.ssd_chunk_size = bad
        with pytest.raises(ConfigError, match="train.ssd_chunk_size"):
            check_stages(exp.train)
    # The trainer refuses it before it builds, loads or writes anything.
    with pytest.raises(ConfigError, match="train.ssd_chunk_size"):
        train_stage(None, exp, 0, None, tmp_path / "stage", Dist())  # type: ignore[arg-type]
    assert not (tmp_path / "stage").exists()

    exp, stage, model, batch = _tiny_sam_batch()
    base = copy.deepcopy(model)
    results = []
    for m, chunk in ((base, 0), (model, 16)):
        set_ssd_chunk_size(m, chunk)
        trainable = m.set_trainable(list(stage.trainable))
        opt, sched = make_optimizer(m, stage, exp.train, torch.device("cpu"))
        results.append(train_step(m, [batch], opt, sched, trainable, exp.train, Dist(), False))
    assert {mx.ssd_chunk_size for mx in model.modules() if isinstance(mx, Mamba2Mixer)} == {16}
    (loss0, norm0, tok0), (loss1, norm1, tok1) = results
    assert tok0 == tok1 and loss1 == pytest.approx(loss0, rel=1e-6) and norm1 == pytest.approx(norm0, rel=1e-9)
    for (name, p0), p1 in zip(base.named_parameters(), model.parameters()):
        torch.testing.assert_close(p1, p0, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    set_ssd_chunk_size(model, 0)  # back to each mixer's default
    assert all("ssd_chunk_size" not in vars(mx) for mx in model.modules() if isinstance(mx, Mamba2Mixer))


def test_uncompile_blocks_hands_back_the_unwrapped_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """compile_blocks wraps mamba_ssm's kernels as opaque to torch.compile; uncompile_blocks puts the
    originals back, so an uncompiled model runs exactly as before. mamba_ssm is absent on CPU, so a
    stand-in function plays its chunk scan (compile_blocks itself is refused on CPU)."""
    import sam.model.mamba2 as mamba2
    from sam.train import uncompile_blocks

    def scan(*args: object) -> str:
        return "scan"

    monkeypatch.setattr(mamba2, "_KERNELS", mamba2._Kernels(chunk_scan=scan))
    block = torch.nn.Linear(2, 2)
    block.forward = torch.compile(block.forward)  # as compile_blocks does, lazily (nothing compiles here)
    mamba2.opaque_kernels(True)  # as compile_blocks does
    wrapped = mamba2._kernels().chunk_scan
    assert wrapped is not scan and wrapped._sam_raw is scan and wrapped() == "scan"
    uncompile_blocks([block])
    assert mamba2._kernels().chunk_scan is scan
    assert "forward" not in vars(block)
