"""Every experiment script on the smoke preset (one run_all in a subprocess, shared by this folder's tests), and the measurement cache."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

import run_all  # noqa: E402

from lib import common, paper_numbers  # noqa: E402
from tests.support.experiments import run_script, smoke_runs_dir  # noqa: E402


@pytest.mark.parametrize("name", run_all.SCRIPTS)
def test_every_script_writes_png_pdf_csv_md_and_filled_provenance_on_smoke(smoke_figures, name):
    out = smoke_figures
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    data = pd.read_csv(out / f"{name}.csv")
    assert len(data) > 0 and "value" in data.columns and data.value.notna().any()
    md = (out / f"{name}.md").read_text()
    assert md.startswith("# ") and "|---" in md.replace(":", "-") and paper_numbers.CITATION in md
    prov = json.loads((out / f"{name}.json").read_text())
    assert prov["experiment"] == name and prov["preset"] == "smoke" and prov["seeds"] == [0]
    assert len(prov["git"]["commit"]) == 40 and prov["config_hashes"]
    assert all(v.startswith("sha256:") for v in prov["data_manifests"].values()), prov["data_manifests"]
    assert prov["versions"]["torch"] != "not installed" and prov["versions"]["numpy"] != "not installed"
    assert prov["device"] and prov["wall_time_s"] > 0 and f"experiments/{name}.py" in prov["command"]


def test_every_figure_rebuilds_from_its_csv(smoke_figures):
    for name in run_all.SCRIPTS:
        fig = importlib.import_module(name).plot(pd.read_csv(smoke_figures / f"{name}.csv"))
        assert fig.axes and all(ax.get_title() or ax.get_ylabel() for ax in fig.axes), name


def test_findings_md_lists_every_paper_finding_with_a_verdict(smoke_figures):
    text = (smoke_figures / "findings.md").read_text()
    for claim in paper_numbers.FINDINGS.values():
        assert f"## {claim}" in text
    # no audio-use gate measured on smoke, and one seed cannot settle a comparison anyway
    assert "**held**" not in text and "**did not hold**" not in text and "not testable" in text


def test_same_seed_retrained_from_scratch_gives_identical_csv(smoke_figures, tmp_path):
    # fig2 probes every stage's checkpoint: any difference in training shows up in its CSV
    run_script("fig2_rank", tmp_path / "out", tmp_path / "fresh-runs")
    first, second = (p.read_bytes() for p in (smoke_figures / "fig2_rank.csv", tmp_path / "out" / "fig2_rank.csv"))
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()


def test_check_audio_conditioning_scores_own_vs_other_audio_on_a_smoke_run(smoke_figures, tmp_path_factory):
    import check_audio_conditioning

    runs = smoke_runs_dir(tmp_path_factory)
    run = sorted(p for p in runs.iterdir() if (p / "model").is_dir())[0]
    out = check_audio_conditioning.main([str(run), "--clips", "8", "--batch-size", "4"])
    assert out["clips"] == 8 and 1 <= out["distinct_answers"] <= 8
    assert all(
        np.isfinite(out[k]) and out[k] > 0 for k in ("loss_own_audio", "loss_other_audio", "audio_token_norm", "text_embedding_norm")
    )
    assert 0 < out["audio_energy_varying_across_clips"] < 1
    # rolling the audio within a batch really changes the input: the losses differ
    assert out["loss_own_audio"] != out["loss_other_audio"]


def test_check_encoder_probe_scores_the_stage0_head_and_a_linear_probe_on_a_smoke_run(smoke_figures, tmp_path_factory):
    import check_encoder_probe

    runs = smoke_runs_dir(tmp_path_factory)
    run = sorted(p for p in runs.iterdir() if (p / "model").is_dir())[0]
    out = check_encoder_probe.main([str(run), "--train-clips", "32", "--batch-size", "8"])
    assert out["stage"] == "stage0" and out["train_clips"] == 32 and out["test_clips"] > 0
    for key in ("chance_mAP", "linear_probe_mAP", "stage_head_mAP"):
        assert 0 < out[key] <= 100, key
    # a stage without the encoder head (the LM pretraining before it) is probed without one
    before = check_encoder_probe.main([str(run), "--stage", "stage_lm", "--train-clips", "32", "--batch-size", "8"])
    assert "stage_head_mAP" not in before and before["chance_mAP"] == out["chance_mAP"]
    # stage 0 trained the encoder: the probe sees different features than at initialization
    assert before["linear_probe_mAP"] != out["linear_probe_mAP"]
    with pytest.raises(SystemExit, match="not a finished run"):
        check_encoder_probe.main([str(runs)])


def test_check_encoder_probe_trains_stage0_alone_with_overrides_and_probes_the_log_mel_floor(tmp_path):
    import check_encoder_probe

    args = ["--preset", "smoke", "--runs", str(tmp_path), "--train-clips", "32", "--batch-size", "8"]
    out = check_encoder_probe.main([*args, "--set", "train.stages.0.steps=3", "--json", str(tmp_path / "records" / "a.json")])
    run = tmp_path / out["run"]
    check_encoder_probe.main(["--summarize", str(tmp_path / "records"), "--preset", "smoke"])
    row = pd.read_csv(tmp_path / "encoder_probe.csv").iloc[0]
    assert (row["record"], row["steps"], row["probe_mAP"]) == ("a", 3, round(out["linear_probe_mAP"], 2))
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["stage0"] and out["set"] == "train.stages.0.steps=3"
    assert 0 < out["linear_probe_mAP"] <= 100 and 0 < out["stage_head_mAP"] <= 100
    floor = check_encoder_probe.main([*args, "--fbank"])
    assert floor["features"] == "log-mel band mean + std" and floor["train_clips"] == 32
    assert 0 < floor["chance_mAP"] < floor["linear_probe_mAP"] <= 100  # 32 training scenes already beat random scores


def test_the_committed_encoder_sweep_table_is_rebuilt_from_its_records(tmp_path):
    import check_encoder_probe

    records = REPO / "figures" / "gpu" / "encoder_probe_records"
    table = check_encoder_probe.summarize(records, "gpu", tmp_path / "encoder_probe")
    assert len(table) == len(list(records.glob("*.json"))) >= 8
    committed = (REPO / "figures" / "gpu" / "encoder_probe.md").read_text()
    assert (tmp_path / "encoder_probe.md").read_text() == committed


def test_defer_scoring_then_cached_assembly_elsewhere_gives_the_same_csv(smoke_figures, tmp_path_factory, tmp_path, capsys):
    """Measure where the runs are (--defer-scoring: answers and probe rows cached, nothing scored or
    written), move only the records (no weights), assemble there (--cached): the same CSV as a
    normal run, and a provenance that says where the measurements were made. table_main also measures
    the other-audio control (`controls.paired`): its deferred pass generates both conditions' answers."""
    import shutil

    import export_measurements
    import table_main
    import table_token_length

    measured = tmp_path / "measured-runs"
    shutil.copytree(smoke_runs_dir(tmp_path_factory), measured, copy_function=os.link, ignore=shutil.ignore_patterns("evals"))
    flags = ["--preset", "smoke"]
    assert table_token_length.main([*flags, "--defer-scoring", "--runs", str(measured), "--out", str(tmp_path / "no")]) == {}
    assert table_main.main([*flags, "--defer-scoring", "--runs", str(measured), "--out", str(tmp_path / "no")]) == {}
    assert not (tmp_path / "no").exists()
    evals = sorted(p.name for p in (measured / "evals").iterdir())
    assert any(n.endswith(".generated.json") for n in evals) and any(n.endswith(".rows.json") for n in evals)
    assert not [n for n in evals if n.endswith(".json") and not n.endswith((".generated.json", ".rows.json"))]  # nothing scored

    packed = tmp_path / "records.tar.gz"
    export_measurements.main(["export", str(packed), "--runs", str(measured)])
    elsewhere = tmp_path / "elsewhere"
    export_measurements.main(["import", str(packed), "--runs", str(elsewhere)])
    assert not list(elsewhere.rglob("*.safetensors")) and not list(elsewhere.rglob("*.pt"))  # records only
    out = tmp_path / "assembled"
    table_token_length.main([*flags, "--cached", "cpu", "--runs", str(elsewhere), "--out", str(out)])
    assert (out / "table_token_length.csv").read_bytes() == (smoke_figures / "table_token_length.csv").read_bytes()
    table_main.main([*flags, "--cached", "cpu", "--runs", str(elsewhere), "--out", str(out)])  # own and other-audio answers
    assert (out / "table_main.csv").read_bytes() == (smoke_figures / "table_main.csv").read_bytes()
    assert pd.read_csv(out / "table_main.csv").metric.str.endswith("_other_audio").any()
    prov = json.loads((out / "table_token_length.json").read_text())
    assert prov["measured_on"] and all(m["device"] and m["versions"]["torch"] for m in prov["measured_on"])
    assert "other_trainings" not in prov and "another training" not in (out / "table_token_length.md").read_text()
    # a run record from another training of the same config (its stage-4 losses differ): the outputs name
    # the answers and probe rows that were measured on the first one
    retrained = tmp_path / "retrained"
    shutil.copytree(elsewhere, retrained)
    record = next(retrained.glob("*-cpu/run.json"))
    info = json.loads(record.read_text())
    stage4 = next(st for st in info["stages"] if st["name"] == "stage4")
    stage4["summary"]["final_loss"] += 1.0
    record.write_text(json.dumps(info))
    table_token_length.main([*flags, "--cached", "cpu", "--runs", str(retrained), "--out", str(tmp_path / "mixed")])
    mixed = json.loads((tmp_path / "mixed" / "table_token_length.json").read_text())["other_trainings"]
    where = f"{record.parent.name} ({Path(stage4['dir']).name})"
    assert f"answers of {where}" in mixed and f"tokens probe rows of {where}" in mixed
    assert "another training of the same config" in (tmp_path / "mixed" / "table_token_length.md").read_text()
    # answers in one cache, probe rows in another (--probe-runs): the same CSV, and the outputs say so
    answers, probes = tmp_path / "answers", tmp_path / "probes"
    shutil.copytree(elsewhere, answers, ignore=shutil.ignore_patterns("*.rows.json"))
    shutil.copytree(elsewhere, probes, ignore=shutil.ignore_patterns("*.generated.json", "*.predictions.csv"))
    split = tmp_path / "split"
    table_token_length.main([*flags, "--cached", "cpu", "--runs", str(answers), "--probe-runs", str(probes), "--out", str(split)])
    assert (split / "table_token_length.csv").read_bytes() == (smoke_figures / "table_token_length.csv").read_bytes()
    assert "Probe rows were read from another run cache (probes/)" in (split / "table_token_length.md").read_text()
    assert json.loads((split / "table_token_length.json").read_text())["probe_runs"] == str(probes)
    with pytest.raises(FileNotFoundError, match=r"--probe-runs .*: no run record .*run\.json there"):
        table_token_length.main(
            [*flags, "--cached", "cpu", "--runs", str(answers), "--probe-runs", str(tmp_path / "empty"), "--out", str(split)]
        )
    with pytest.raises(SystemExit):
        common.parse_args("x", "x", argv=["--probe-runs", str(probes)])
    assert "use it with --cached" in capsys.readouterr().err

    # importing again keeps what is there; a changed file is reported, not overwritten
    victim = next((elsewhere / "evals").glob("*.rows.json"))
    victim.write_text("{}")
    written, conflicts = export_measurements.import_(packed, elsewhere)
    assert written == 0 and conflicts == [f"evals/{victim.name}"] and victim.read_text() == "{}"

    # a run with no record: one error naming the missing run.json, and nothing trained
    with pytest.raises(FileNotFoundError, match=r"--cached cpu: .*run\.json is missing \(the small LM, seed 0"):
        table_token_length.main([*flags, "--cached", "cpu", "--runs", str(tmp_path / "empty"), "--out", str(out)])
    assert not (tmp_path / "empty").exists()
    with pytest.raises(SystemExit):
        common.parse_args("x", "x", argv=["--defer-scoring", "--cached", "cpu"])
    assert "use one of them" in capsys.readouterr().err


def test_table_reasoning_adds_likelihood_accuracy_where_weights_were_there(smoke_figures, tmp_path_factory, tmp_path):
    """Table 5 reports the likelihood protocol beside MMAU's rule for runs measured with their weights;
    from cached answers alone (no likelihood records) it leaves it out and says so, never inventing it."""
    import shutil

    import table_reasoning

    data = pd.read_csv(smoke_figures / "table_reasoning.csv")
    lk = data[data.metric == "likelihood_accuracy"]
    assert len(lk) == 2 and lk.value.between(0, 100).all()
    # chance: the larger of a uniform guess and the best answer prior on the same questions
    assert (lk.uniform == 25.0).all() and (lk.chance >= 25.0).all() and np.allclose(lk.chance, lk[["uniform", "prior"]].max(axis=1))
    assert set(data.metric) >= {"accuracy", "likelihood_accuracy", "likelihood_accuracy_per_token", "likelihood_accuracy_other_audio"}
    assert len(data[data.metric == "likelihood_accuracy_other_audio"]) == 2
    runs = smoke_runs_dir(tmp_path_factory)
    assert list((runs / "evals").glob("*.likelihoods.json"))
    answers_only = tmp_path / "answers-only"
    shutil.copytree(runs, answers_only, ignore=shutil.ignore_patterns("*.likelihoods.json", "*.safetensors", "*.pt"))
    table_reasoning.main(["--preset", "smoke", "--cached", "cpu", "--runs", str(answers_only), "--out", str(tmp_path / "out")])
    cached = pd.read_csv(tmp_path / "out" / "table_reasoning.csv")
    assert not cached.metric.str.startswith("likelihood").any()
    pd.testing.assert_frame_equal(cached, data[~data.metric.str.startswith("likelihood")].reset_index(drop=True), check_dtype=False)
    md = (tmp_path / "out" / "table_reasoning.md").read_text()
    assert "reasoning likelihood_accuracy" in md and "n/a" in md


def test_train_procs_trains_a_missing_run_under_torchrun_where_the_scripts_look_for_it(
    smoke_figures, tmp_path_factory, tmp_path, monkeypatch
):
    import measure

    monkeypatch.chdir(tmp_path)  # a relative --runs means the caller's folder, not the launch's
    s = common.parse_args("table_main", "t", argv=["--preset", "smoke", "--runs", "runs", "--train-procs", "2"])
    run = measure.train(s, "small", 0)
    assert json.loads((run.dir / "run.json").read_text())["world_size"] == 2 and (run.dir / "model").is_dir()
    # the run the one-process scripts trained from the same settings has the same cache entry
    assert (smoke_runs_dir(tmp_path_factory) / run.dir.name / "model").is_dir()
    assert not list((tmp_path / "runs").glob(".*.torchrun.yaml")), "the launch config was left behind"
    with pytest.raises(SystemExit):
        common.parse_args("table_main", "t", argv=["--preset", "smoke", "--train-procs", "0"])


def test_parallel_runs_train_missing_runs_in_their_own_processes_and_report_failures_together(smoke_figures, tmp_path_factory, tmp_path):
    """--parallel-runs: the runs the cache lacks are trained by concurrent `sam train` processes into the
    cache entries the scripts look in (the one-process runs of the same settings have the same names);
    a run that fails is reported with its log after the others finished, and they stay cached."""
    import measure

    runs = tmp_path / "runs"
    s = common.parse_args("table_x", "t", argv=["--preset", "smoke", "--seeds", "2", "--runs", str(runs), "--parallel-runs", "2"])
    got = measure.grid(s)
    assert [r.labels["seed"] for r in got] == [0, 1]
    assert all((r.dir / "model").is_dir() and json.loads((r.dir / "run.json").read_text())["world_size"] == 1 for r in got)
    assert (smoke_runs_dir(tmp_path_factory) / got[0].dir.name).is_dir()  # seed 0: the name the smoke scripts trained under
    assert not list(runs.glob(".*.parallel.*"))  # launch configs and logs of runs that trained are removed
    stamps = {r.dir.name: (r.dir / "model").stat().st_mtime_ns for r in got}
    assert measure.train_parallel([r.cfg for r in got], runs, 2) == []  # all cached: nothing launched
    assert {r.dir.name: (r.dir / "model").stat().st_mtime_ns for r in measure.grid(s)} == stamps

    s = common.parse_args("table_x", "t", argv=["--preset", "smoke", "--runs", str(runs), "--parallel-runs", "2"])
    with pytest.raises(RuntimeError, match=r"--parallel-runs: 1 of 2 runs failed to train: .*exit code 2; log .*\.parallel\.log"):
        measure.grid(s, {"ok": ["model.lora.rank=4"], "bad": ["data.source=openaqa"]}, "variant")  # bad: no data.json_train
    log = next(runs.glob(".*.parallel.log"))
    assert "data.json_train: not set" in log.read_text()
    ok = common.run_config(s, "small", 0, ["model.lora.rank=4"])
    from sam.train.runs import run_dir_for

    assert (run_dir_for(ok, runs, "cpu") / "model").is_dir()
    with pytest.raises(SystemExit):
        common.parse_args("x", "x", argv=["--parallel-runs", "2", "--train-procs", "2"])


def test_parallel_runs_measure_in_worker_processes_and_the_script_only_assembles(smoke_figures, tmp_path_factory, tmp_path, monkeypatch):
    """--parallel-runs N also measures in N processes (each `--defer-scoring --measure-shard I/N`, its
    share of the answers and probe rows by cache key): the script's own process then generates and
    probes nothing, and writes the same CSV as the one-process run."""
    import shutil

    import measure
    import table_token_length

    runs = tmp_path / "runs"
    shutil.copytree(smoke_runs_dir(tmp_path_factory), runs, copy_function=os.link, ignore=shutil.ignore_patterns("evals"))

    def refuse(*args, **kwargs):
        raise AssertionError("the script's own process measured an item the workers should have")

    monkeypatch.setattr(measure, "_generate", refuse)
    monkeypatch.setattr(measure, "_probe_inputs", refuse)
    out = tmp_path / "out"
    table_token_length.main(["--preset", "smoke", "--runs", str(runs), "--parallel-runs", "2", "--out", str(out)])
    assert (out / "table_token_length.csv").read_bytes() == (smoke_figures / "table_token_length.csv").read_bytes()
    made = [json.loads(p.read_text()) for p in (runs / "evals").glob("*.generated.json")]
    assert len(made) == 3 and not list(runs.glob(".*.measure-*.log"))  # one answer set per layout; logs of workers that succeeded removed

    # a worker measures only its share, writes nothing, and says it deferred
    monkeypatch.undo()
    for p in (runs / "evals").glob("*"):
        p.unlink()
    shares = []
    for i in range(2):
        assert table_token_length.main(["--preset", "smoke", "--runs", str(runs), "--defer-scoring", "--measure-shard", f"{i}/2"]) == {}
        shares.append({p.name for p in (runs / "evals").glob("*.json")} - set().union(*shares))
    assert shares[0] and shares[1] and len(shares[0]) + len(shares[1]) == 9  # 3 layouts x (answers, token rows, state rows)
    for bad in (["--measure-shard", "2/2", "--defer-scoring"], ["--measure-shard", "x", "--defer-scoring"], ["--measure-shard", "0/2"]):
        with pytest.raises(SystemExit):
            common.parse_args("x", "x", argv=bad)


def test_audio_use_writes_the_gate_with_controls_baseline_and_probe_on_a_smoke_run(smoke_figures, tmp_path_factory, tmp_path):
    from sam.config import preset
    from sam.data import build_examples
    from sam.data.types import label_matrix
    from sam.eval.baselines import random_map

    run_script("audio_use", tmp_path, smoke_runs_dir(tmp_path_factory))
    data = pd.read_csv(tmp_path / "audio_use.csv")
    assert list(data.columns) == [
        "lm_size",
        "seed",
        "metric",
        "own",
        "other_audio",
        "random_baseline",
        "probe_ceiling",
        "gate",
        "passes",
        "ci_low",
        "ci_high",
        "note",
    ]
    assert sorted(data.gate.str[:2]) == ["G1", "G2", "G2", "G3"] and data.passes.isin([True, False]).all()
    assert data[["own", "other_audio", "ci_low", "ci_high"]].notna().all().all()
    assert (data.ci_low <= data.own - data.other_audio + 1e-9).all() and (data.own - data.other_audio <= data.ci_high + 1e-9).all()
    cls = build_examples(preset("smoke").data, "test", ["classification"])
    y = label_matrix(cls, sorted({l for ex in cls for l in ex.labels}))
    m = data[data.metric == "mAP"]
    assert np.allclose(m.random_baseline, 100 * random_map(y)) and (m.probe_ceiling > 0).all()
    g1 = m[m.gate.str.startswith("G1")].iloc[0]
    assert bool(g1.passes) == (
        g1.own >= g1.random_baseline + 5 and g1.own - g1.random_baseline >= 0.4 * (g1.probe_ceiling - g1.random_baseline)
    )
