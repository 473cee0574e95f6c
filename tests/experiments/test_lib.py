"""The experiments' shared library (experiments/lib): flags, run configs, cache keys, verdicts, outputs, the audio-use gate, baselines."""

from __future__ import annotations

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
    parts = {
        "checkpoint": os.path.relpath(ckpt, tmp_path),
        "variant": "",
        "tasks": ["caption"],
        "eval": to_dict(cfg.eval),
        "max_new_tokens": cfg.train.max_new_tokens,
        "device": measure.run_device(s),
    }
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
    argv = [
        "--preset",
        "paper",
        "--mamba-checkpoints",
        str(tmp_path / "m"),
        "--eat-checkpoint",
        str(tmp_path / "eat.pt"),
        "--tokenizer",
        str(tmp_path / "neox"),
        "--clap",
        str(tmp_path / "clap"),
    ]
    s = common.parse_args("t", "doc", argv=argv)  # nothing required: no validation
    cfg = common.run_config(s, "medium")
    assert cfg.model.lm_checkpoint == str(tmp_path / "m" / "mamba2-780m")
    assert cfg.model.encoder.checkpoint == str(tmp_path / "eat.pt") and cfg.model.tokenizer == str(tmp_path / "neox")
    assert cfg.eval.text_encoder_path == str(tmp_path / "clap") and cfg.model.lora.rank == 256


@pytest.mark.parametrize(
    "better, worse, verdict",
    [
        ([0.8, 0.82, 0.79], [0.5, 0.52, 0.49], "held"),
        ([0.5, 0.52, 0.49], [0.8, 0.82, 0.79], "did not hold"),
        ([0.8, 0.4, 0.6], [0.5, 0.7, 0.6], "inconclusive"),
        ([0.9], [0.1], "inconclusive"),
    ],
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


def test_findings_md_orders_each_findings_rows_by_preset_then_folder(tmp_path):

    key = next(iter(paper_numbers.FINDINGS))
    for where, preset in [("gpu", "gpu"), (".", "cpu"), ("cpu_more", "cpu"), ("a_smoke", "smoke")]:
        (tmp_path / where).mkdir(exist_ok=True)
        finding = {"key": key, "measurement": f"from {where}", "verdict": "inconclusive"}
        (tmp_path / where / "x.json").write_text(json.dumps({"experiment": "x", "preset": preset, "seeds": [0], "findings": [finding]}))
    text = run_all.findings_markdown(tmp_path)
    assert [text.index(f"from {w}") for w in ("a_smoke", ".", "cpu_more", "gpu")] == sorted(
        text.index(f"from {w}") for w in ("a_smoke", ".", "cpu_more", "gpu")
    )


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
    from sam.config import ExperimentConfig, from_dict
    from sam.data import build_examples
    from sam.data.corpus import manifest_hash
    from sam.data.types import label_matrix
    from sam.eval.baselines import fast_map

    prov = json.loads((REPO / folder / "table_main.json").read_text())
    cfg = from_dict(ExperimentConfig, next(iter(prov["configs"].values())))
    measured_on, here = prov["data_manifests"].get("data"), "sha256:" + manifest_hash(cfg.data.root)
    if measured_on != here:  # its test scenes cannot be recomposed from another corpus build
        pytest.skip(f"{folder} was measured on corpus {measured_on}; this corpus is {here}")
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

    base = {
        "classification": {"mAP": {"chance": 0.12, "uniform": 0.12, "prior": 0.06}},
        "reasoning": {"accuracy": {"chance": 0.3, "uniform": 0.25, "prior": 0.3}},
        "categories": {"Counting": {"chance": 0.4, "uniform": 0.25, "prior": 0.4}},
    }
    data = pd.DataFrame(
        {
            "category": ["all", "Counting", "all"],
            "task": ["classification", "reasoning", "caption"],
            "metric": ["mAP", "accuracy", "CIDEr-D"],
            "value": [10.0, 30.0, 20.0],
            "chance": [6.2, 25.0, np.nan],
        }
    )
    new = rebaseline.rebaseline_csv(data, base)
    assert list(new.chance[:2]) == [12.0, 40.0] and np.isnan(new.chance[2]) and list(new.value) == [10.0, 30.0, 20.0]
    md = "| size | classification mAP chance |\n|:--|--:|\n| small | 6.2 |\n"
    out = rebaseline.rewrite_markdown(md, new)
    assert "| 12.0 |" in out.replace("  ", " ").replace("  ", " ") and rebaseline.MARKER in out
    assert rebaseline.rewrite_markdown(out, new).count(rebaseline.MARKER) == 1  # rerunning replaces its note
