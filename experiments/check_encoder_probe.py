"""What does a trained audio encoder know about the scene classes? A linear-probe diagnostic, not a paper figure.

For one trained run and one of its stages (default: the encoder-pretraining stage, `stage0`), on
real rendered scenes of the classification task:
- the stage's own multi-label head, scored on the test scenes (only the encoder-pretraining stage keeps one);
- a linear probe: one logistic regression per class (scikit-learn, one-vs-rest) fit on the encoder's
  mean-pooled patch grid of training scenes and scored on the test scenes;
both as mAP (`sam.eval.metrics.classification_metrics`: macro over classes with positives), beside its
chance level (the expected mAP of random scores on the same test scenes). `probe` is the library
call (the audio-use gate's probe ceiling uses it). `--stage stage_lm` probes the encoder as initialized (the
stages before pretraining leave it untouched), which is the baseline a pretrained encoder must beat.

    python experiments/check_encoder_probe.py runs/<hash>-cpu [--stage stage0] [--train-clips 2048]
    python experiments/check_encoder_probe.py --preset cpu [--set data.n_train=4000]   # train stage 0 alone, probe it
    python experiments/check_encoder_probe.py --preset cpu --fbank                       # the log-mel floor

`--preset` trains (or loads from the run cache) the preset's encoder pretraining alone, with `--set`
overrides, and probes it. `--fbank` instead probes the input itself, each log-mel band's mean and
standard deviation over the scene: the floor a trained encoder should beat.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm


def features(model: Any, dataset: Any, collate: Any, batch_size: int, desc: str) -> tuple[np.ndarray, list[Any]]:
    """Mean-pooled encoder output [clips, dim] (the input of the stage-0 head) and the examples in order."""
    rows, examples = [], []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch", leave=False):
            batch = collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
            rows.append(model.audio_tower(batch["fbank"].to(device)).mean(dim=(1, 2)).double().cpu().numpy())
            examples += batch["examples"]
    return np.concatenate(rows), examples


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float, seed: int) -> np.ndarray:
    """Test scores of one standardized logistic regression per class (classes without a training
    positive score 0: they cannot be learned, and mAP leaves out test classes without positives)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros((len(x_test), y_train.shape[1]))
    learnable = (y_train.sum(0) > 0) & (y_train.sum(0) < len(y_train))
    clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000, random_state=seed)))
    clf.fit(x_train, y_train[:, learnable])
    scores[:, learnable] = clf.decision_function(x_test)
    return scores


def probe(
    run_dir: Path, stage: str = "stage0", train_clips: int = 2048, test_clips: int | None = None, c: float = 1.0, batch_size: int = 32
) -> dict[str, Any]:
    """Linear-probe (and, where the stage kept one, stage-head) test mAP of the encoder of `run_dir`
    after `stage`, in percent, with its chance level (module docstring). Needs the run's weights."""
    import measure
    from check_audio_conditioning import task_data

    from sam.config import load_yaml
    from sam.data import build_examples
    from sam.data.types import label_matrix
    from sam.eval.metrics import classification_metrics
    from sam.train.runs import get_tokenizer, stage_model

    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run (no run.json)")
    exp = load_yaml(run_dir / "config.yaml")
    model = stage_model(run_dir, stage, "cuda" if torch.cuda.is_available() else None).eval()
    head_path = measure.stage(measure.Run(exp, run_dir, {}), stage) / "encoder_head.pt"
    head = torch.load(head_path, weights_only=True) if head_path.is_file() else None
    classes = (
        list(head["classes"])
        if head is not None
        else sorted({lab for ex in build_examples(exp.data, "train", ["classification"]) for lab in ex.labels})
    )

    data = task_data(exp, "classification", get_tokenizer(exp, run_dir.parent))
    splits = {}
    for split, limit in (("train", train_clips), ("test", test_clips)):
        examples = build_examples(exp.data, split, ["classification"])[:limit]
        if not examples:
            raise ValueError(f"{run_dir}: no {split} scenes of the classification task")
        x, ex = features(model, data.make_dataset(examples), data.collate, batch_size, f"{split} features")
        splits[split] = (x, label_matrix(ex, classes))
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]

    scored = classification_metrics(y_test, linear_probe(x_train, y_train, x_test, c, exp.train.seed), bootstrap=0)
    out: dict[str, Any] = {
        "run": run_dir.name,
        "stage": stage,
        "train_clips": len(x_train),
        "test_clips": len(x_test),
        "classes": len(classes),
        "chance_mAP": 100 * scored["chance"]["mAP"],
        "linear_probe_mAP": 100 * scored["mAP"],
        "linear_probe_accuracy": 100 * scored["accuracy"],
    }
    if head is not None:
        lin = torch.nn.Linear(x_test.shape[1], len(classes)).double()
        lin.load_state_dict({k: v.double() for k, v in head["head"].items()})
        with torch.no_grad():
            out["stage_head_mAP"] = 100 * classification_metrics(y_test, lin(torch.from_numpy(x_test)).numpy(), bootstrap=0)["mAP"]
    return out


def fbank_probe(exp: Any, train_clips: int = 2048, test_clips: int | None = None, c: float = 0.1) -> dict[str, Any]:
    """Linear-probe test mAP (percent) on each scene's log-mel band means and standard deviations."""
    from lib.probing import log_mel_stats
    from sam.data import build_examples
    from sam.data.dataset import example_wave
    from sam.data.types import label_matrix
    from sam.eval.metrics import classification_metrics
    from sam.model.audio import wave_to_features

    splits = {}
    for split, limit in (("train", train_clips), ("test", test_clips)):
        examples = build_examples(exp.data, split, ["classification"])[:limit]
        x = []
        for ex in tqdm(examples, desc=f"{split} log-mel", unit="scene", leave=False):
            fb = wave_to_features(example_wave(ex, exp.data.root), exp.model.audio)
            x.append(log_mel_stats(fb).double().numpy())
        splits[split] = (np.stack(x), examples)
    classes = sorted({lab for ex in splits["train"][1] for lab in ex.labels})
    (x_train, ex_train), (x_test, ex_test) = splits["train"], splits["test"]
    scored = classification_metrics(
        label_matrix(ex_test, classes), linear_probe(x_train, label_matrix(ex_train, classes), x_test, c, exp.train.seed), bootstrap=0
    )
    return {
        "features": "log-mel band mean + std",
        "train_clips": len(x_train),
        "test_clips": len(x_test),
        "classes": len(classes),
        "chance_mAP": 100 * scored["chance"]["mAP"],
        "linear_probe_mAP": 100 * scored["mAP"],
        "C": c,
    }


def encoder_config(preset_name: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The preset's config cut to its encoder pretraining stage (index 0 then), with `overrides`."""
    from sam.config import apply_overrides, preset

    exp = preset(preset_name)
    exp.train.stages = [s for s in exp.train.stages if s.name == "stage0"]
    if not exp.train.stages:
        raise SystemExit(f"--preset {preset_name}: its curriculum has no encoder pretraining stage (stage0)")
    return apply_overrides(exp, list(overrides))


def pretrain_encoder(preset_name: str, overrides: list[str], runs: Path) -> Path:
    """Train (or load) the preset's encoder pretraining stage alone, with `overrides`; returns the run."""
    from sam.train.runs import train_or_load

    return train_or_load(encoder_config(preset_name, overrides), runs)


def summarize(records: Path, preset_name: str, out: Path) -> Any:
    """One row per `--json` record in `records` (trained with `--preset preset_name`): the stage-0 settings
    it ran with (the preset's, changed by its `--set`), its probe and head mAP beside random scores'.
    Writes `out`.csv and `out`.md; returns the table."""
    import json

    import pandas as pd

    repo = Path(__file__).resolve().parents[1]
    shown = records.resolve().relative_to(repo) if records.resolve().is_relative_to(repo) else records
    rows = []
    for path in sorted(records.glob("*.json")):
        rec = json.loads(path.read_text())
        try:
            exp = encoder_config(preset_name, rec["set"].split())
            stage = exp.train.stages[0]
            rows.append(
                {
                    "record": path.stem,
                    "encoder": exp.model.encoder.size,
                    "scenes": exp.data.n_train,
                    "steps": stage.steps,
                    "lr": stage.lr,
                    "batch": stage.batch_size,
                    "spec_mask": f"{exp.model.encoder.pretrain_freq_mask}/{exp.model.encoder.pretrain_time_mask}",
                    "seed": exp.train.seed,
                    "probe_mAP": round(rec["linear_probe_mAP"], 2),
                    "head_mAP": round(rec["stage_head_mAP"], 2) if "stage_head_mAP" in rec else None,
                    "random_mAP": round(rec["chance_mAP"], 2),
                    "test_scenes": rec["test_clips"],
                    "probe_train_scenes": rec["train_clips"],
                    "device": rec.get("device", ""),
                }
            )
        except (KeyError, ValueError, TypeError) as err:
            print(f"[summary] skipped {path}: {type(err).__name__}: {err}")
    table = pd.DataFrame(rows).sort_values(["encoder", "lr", "steps", "spec_mask", "seed"], ascending=[False, False, True, True, True])
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    out.with_suffix(".md").write_text(
        f"# Encoder pretraining alone ({preset_name} preset): linear probe and stage-0 head\n\n"
        "mAP (%) on the same test scenes for every row; `random_mAP` is the expected mAP of random scores there. "
        "spec_mask = max masked mel bins / frames. Rebuilt from the records by "
        f"`python experiments/check_encoder_probe.py --summarize {shown}`.\n\n" + table.to_markdown(index=False) + "\n"
    )
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, nargs="?", help="a run directory (runs/<hash>-<device>); or use --preset")
    p.add_argument("--preset", default=None, help="train the preset's stage 0 alone (run cache) and probe it")
    p.add_argument("--set", nargs="*", default=[], help="dotted config overrides for --preset (key=value)")
    p.add_argument("--fbank", action="store_true", help="with --preset: probe the log-mel statistics instead")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--stage", default="stage0", help="stage whose encoder to probe (default: stage0)")
    p.add_argument("--train-clips", type=int, default=2048, help="training scenes the probe is fit on (default: 2048)")
    p.add_argument("--test-clips", type=int, default=None, help="test scenes to score (default: all)")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regressions (default: 1.0)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    p.add_argument("--summarize", type=Path, default=None, help="tabulate a folder of --json records instead (with --preset, default gpu)")
    p.add_argument("--out", type=Path, default=None, help="with --summarize: output stem (default: the folder's parent / encoder_probe)")
    args = p.parse_args(argv)
    if args.summarize:
        table = summarize(args.summarize, args.preset or "gpu", args.out or args.summarize.parent / "encoder_probe")
        print(table.to_markdown(index=False))
        return {"rows": len(table)}
    if args.preset and args.fbank:
        from sam.config import apply_overrides, preset

        out = fbank_probe(apply_overrides(preset(args.preset), args.set), args.train_clips, args.test_clips)
    else:
        if args.preset:
            args.run = pretrain_encoder(args.preset, args.set, args.runs)
        if args.run is None or not (args.run / "run.json").is_file():
            raise SystemExit(f"{args.run}: not a finished run (no run.json); give a run directory or --preset")
        out = probe(args.run, args.stage, args.train_clips, args.test_clips, args.C, args.batch_size)
        out["set"] = " ".join(args.set)
    for k, v in out.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    if args.json:
        import json

        from sam.checkpoint import atomic_write_bytes

        out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        out["preset"], out["torch"] = args.preset, torch.__version__
        atomic_write_bytes(args.json, (json.dumps(out, indent=1) + "\n").encode())
    return out


if __name__ == "__main__":
    main()
