"""The measurement cache's modes (experiments/lib/cache.py) on hand-made records: fresh, shard worker, --cached, deferred."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

from lib import cache, common  # noqa: E402


def settings(runs: Path, *flags: str) -> common.Settings:
    return common.parse_args("t", "doc", argv=["--preset", "smoke", "--runs", str(runs), *flags])


def refuse() -> dict:
    raise AssertionError("measured a record this process should only read or leave")


def run_record(run_dir: Path, final_loss: float) -> cache.Source:
    """A run whose record describes one training of its stage 4 (by its final loss), as the source of a record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = [{"name": "stage4", "dir": "stages/4-stage4-abc", "summary": {"final_loss": final_loss}}]
    (run_dir / "run.json").write_text(json.dumps({"stages": stages}))
    return cache.Source(run_dir, "4-stage4-abc", "answers of run")


def test_fresh_makes_a_missing_record_once_stamps_its_origin_and_notes_it(tmp_path):
    s = settings(tmp_path)
    source = run_record(tmp_path / "run", 1.0)
    path = tmp_path / "evals" / "0a1b.generated.json"
    made = []

    def make() -> dict:
        made.append(path.name)
        return {"ids": ["x"], "predictions": ["a dog"]}

    first = cache.slot(s, path).record(make, source)
    assert list(first) == ["ids", "predictions", "made_on", "trained"] and json.loads(path.read_text()) == first
    assert first["made_on"] == cache.made_on() and first["trained"] == cache.trained(source.run_dir, source.stage_dir)
    assert first["trained"] is not None
    assert cache.slot(s, path).record(make, source) == first and made == [path.name]  # read, not measured again
    assert s.measured_on == {json.dumps(first["made_on"], sort_keys=True)} and not s.other_trainings

    # the run record now describes another training of the stage: reading the record says so
    run_record(tmp_path / "run", 2.0)
    later = settings(tmp_path)
    cache.slot(later, path).record(refuse, source)
    assert later.other_trainings == {"answers of run (4-stage4-abc)"}

    # a record with no source is stamped with where it was made only, and noted nowhere
    plain = settings(tmp_path)
    assert cache.slot(plain, tmp_path / "evals" / "0c.probe.json").record(lambda: {"mAP": 1.5}) == {"mAP": 1.5, "made_on": cache.made_on()}
    assert not plain.measured_on and not plain.other_trainings


def test_a_shard_worker_makes_only_its_share_of_the_missing_records_and_reads_any_existing_one(tmp_path):
    paths = [tmp_path / "evals" / f"{k:02x}.rows.json" for k in range(6)]
    for i in range(2):
        worker = settings(tmp_path, "--defer-scoring", "--measure-shard", f"{i}/2")
        mine = [p for p in paths if cache.slot(worker, p) is not None]
        assert mine == paths[i::2]  # keys 00, 02, 04 to worker 0; 01, 03, 05 to worker 1
    assert all(cache.slot(settings(tmp_path), p) is not None for p in paths)  # one process measures them all

    paths[1].parent.mkdir(parents=True)
    paths[1].write_text(json.dumps({"rows": [1]}))
    worker0 = settings(tmp_path, "--defer-scoring", "--measure-shard", "0/2")
    assert cache.slot(worker0, paths[1]).record(refuse) == {"rows": [1]}


def test_cached_reads_records_refuses_missing_ones_the_outputs_need_and_leaves_out_the_others(tmp_path):
    s = settings(tmp_path, "--cached", "cpu")
    missing = tmp_path / "evals" / "0d.generated.json"
    needed = cache.slot(s, missing, missing="--cached cpu: no generated answers here")
    with pytest.raises(FileNotFoundError, match="no generated answers here"):
        needed.record(refuse)
    assert cache.slot(s, missing) is None  # a measurement the outputs can go without: absent
    assert not missing.exists()

    found = tmp_path / "evals" / "0e.likelihoods.json"
    found.parent.mkdir(parents=True, exist_ok=True)
    found.write_text(json.dumps({"ids": [], "made_on": {"device": "elsewhere"}}))
    source = run_record(tmp_path / "run", 1.0)
    assert cache.slot(s, found).record(refuse, source)["ids"] == []
    assert s.measured_on == {json.dumps({"device": "elsewhere"})}


def test_deferred_scripts_return_nothing_and_say_how_to_finish(tmp_path, capsys):
    s = settings(tmp_path, "--defer-scoring")
    assert cache.deferred(s, 3) == {}
    said = capsys.readouterr().out
    assert "--defer-scoring: answers and probe rows of 3 runs cached" in said and "--cached" in said
