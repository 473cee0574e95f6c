"""Crash safety of checkpoints, the learning-rate schedule and the resumable data order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sam.checkpoint import LATEST, checkpoint_path, load_latest, publish_dir, save_checkpoint
from sam.train import StreamSampler, lr_lambda


def test_loader_ignores_partial_temp_file_and_corrupt_latest(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.arange(4)})
    # A writer killed mid-write leaves a truncated temporary file behind.
    (tmp_path / ".step-00000004.pt.tmp-12345").write_bytes(b"\x80\x02truncated")
    assert load_latest(tmp_path)["step"] == 2
    # Even a pointer naming a truncated checkpoint falls back to the newest loadable one.
    checkpoint_path(tmp_path, 6).write_bytes(b"PK\x03\x04 not a whole zip")
    (tmp_path / LATEST).write_text("step-00000006.pt")
    assert load_latest(tmp_path)["step"] == 2


def test_save_keeps_newest_two_and_removes_stale_temp_files(tmp_path: Path) -> None:
    (tmp_path / ".step-00000001.pt.tmp-99999").write_bytes(b"x")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [LATEST, "step-00000002.pt", "step-00000003.pt"]
    assert load_latest(tmp_path)["step"] == 3


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_loadable(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import torch
        from sam.checkpoint import save_checkpoint
        save_checkpoint({str(tmp_path)!r}, 1, {{"step": 1, "w": torch.ones(1000)}})
        save_checkpoint({str(tmp_path)!r}, 2, {{"step": 2, "w": torch.ones(1000)}})
        """
    )
    env = dict(os.environ, SAM_CHECKPOINT_FAULT="*step-00000002.pt", SAM_CHECKPOINT_FAULT_SECONDS="60")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob(".step-00000002.pt.tmp-*")):
            assert proc.poll() is None and time.time() < deadline, "writer never reached the second checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    partial = next(tmp_path.glob(".step-00000002.pt.tmp-*"))
    assert 0 < partial.stat().st_size
    state = load_latest(tmp_path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))


def test_publish_dir_is_all_or_nothing(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        publish_dir(tmp_path / "final", broken)
    assert not (tmp_path / "final").exists()
    publish_dir(tmp_path / "final", lambda tmp: (tmp / "model.txt").write_text("ok"))
    assert (tmp_path / "final" / "model.txt").read_text() == "ok"
    with pytest.raises(FileExistsError):
        publish_dir(tmp_path / "final", lambda tmp: None)


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_floor() -> None:
    f = lr_lambda(warmup=4, total=20, min_ratio=0.1)
    assert [f(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(20) == pytest.approx(0.1) and f(25) == pytest.approx(0.1)
    values = [f(i) for i in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_rank_slices_of_stream_sampler_tile_the_single_process_batches() -> None:
    one = _take(iter(StreamSampler(10, 4, seed=3)), 6)
    ranks = [_take(iter(StreamSampler(10, 4, seed=3, rank=r, world_size=2)), 6) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == one
    # Each epoch is a permutation: the first 10 stream positions cover every example once.
    flat = [i for b in one for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]


def test_stream_sampler_started_midway_continues_the_same_order() -> None:
    full = _take(iter(StreamSampler(7, 3, seed=1)), 8)
    resumed = StreamSampler(7, 3, seed=1, start=5)
    assert _take(iter(resumed), 3) == full[5:]
    assert resumed.position(5) == {"epoch": 2, "offset": 1, "micro_batch": 5}
