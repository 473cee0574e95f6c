"""The `sam` command's argument parser: one subcommand per entry of `sam.cli.COMMANDS`."""

from __future__ import annotations

import argparse
from typing import Any

from sam.cli.data_commands import CONVERTERS


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def add_command(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description, formatter_class=Formatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam",
        description="SAM: a Mamba-2 state-space audio-language model. Train it through a staged curriculum, "
        "evaluate it, ask it about audio, and probe its audio-token representations.",
        formatter_class=Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = add_command(
        sub,
        "prepare-data",
        "extract the real-audio corpus from the Debian sound packages",
        "Extract the embedded default corpus (ufoai, OpenSFX, Sonic Pi and Asterisk recordings installed "
        "with apt) into ROOT with a manifest of clips, labels, captions and licences.",
    )
    p.add_argument("--root", default="data", help="output folder")
    p.add_argument(
        "--from-archive",
        default=None,
        metavar="TAR",
        help="unpack a `sam export-corpus` archive instead (for machines without the Debian packages)",
    )

    p = add_command(
        sub,
        "export-corpus",
        "pack a built corpus into one file for another machine",
        "Write ROOT/corpus (manifest, class map, report and every clip as lossless FLAC, about half the "
        "size of the wavs) to one tar file. `sam prepare-data --from-archive FILE` on the other machine "
        "restores the identical corpus, so its scene, feature and run caches match this machine's. "
        "--codec opus packs the clips as lossy Ogg Opus instead (~45 MB for corpus v2), for uploads with a "
        "size limit; the restored corpus then carries corpus/transcode.json saying so.",
    )
    p.add_argument("out", help="archive file to write (.tar)")
    p.add_argument("--root", default="data", help="folder holding corpus/")
    p.add_argument("--codec", choices=("flac", "opus"), default="flac", help="flac (lossless, default) or opus (lossy, small)")
    p.add_argument("--level", type=float, default=0.96, help="opus compression level in [0, 1]; higher is smaller (default 0.96)")

    p = add_command(
        sub,
        "train",
        "train a model through the stage curriculum of a config",
        "Train the curriculum of a YAML config (e.g. configs/smoke.yaml), with dotted key=value overrides "
        "such as train.stages.1.lr=3e-4 or model.lora.rank=16. Stages already trained by any earlier run "
        "with the same settings are reused from RUNS_DIR; an interrupted stage resumes from its newest "
        "checkpoint. Launch under torchrun for several processes. Prints the run directory.",
    )
    p.add_argument("--config", required=True, help="experiment YAML (top-level `preset: NAME` plus overrides)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--runs-dir", default="runs", help="run cache folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = add_command(
        sub,
        "eval",
        "evaluate a trained model on a data split",
        "Generate answers for a split's examples and score them: classification (mAP, accuracy, micro-F1 "
        "from text-embedding similarity), captioning (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE when CoreNLP "
        "is configured) and multiple choice (MMAU string match). Writes metrics.json and predictions.csv.",
    )
    model_args(p)
    p.add_argument("--config", default=None, help="experiment YAML for the data settings (default: the run's own)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="which split")
    p.add_argument("--tasks", nargs="+", default=["classification", "closed", "open", "caption", "reasoning"], help="tasks to evaluate")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many examples (0 = all)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval-<split>, or ./eval-<split>)")

    p = add_command(
        sub,
        "caption",
        "describe audio files in one sentence each",
        "Caption each AUDIO file with a trained model (greedy decoding). Unreadable files are reported "
        "and skipped; the exit code is 1 if any failed.",
    )
    model_args(p)
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    p.add_argument("--instruction", default="Write a caption for the audio clip.", help="the instruction given to the model")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer in tokens")
    p.add_argument("--batch-size", type=int, default=8, help="files decoded and answered together (bounds memory)")

    p = add_command(sub, "ask", "ask a question about an audio file", "Answer QUESTION about AUDIO with a trained model (greedy decoding).")
    model_args(p)
    p.add_argument("audio", help="audio file")
    p.add_argument("question", help="the question, in plain text")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer in tokens")

    p = add_command(
        sub,
        "probe",
        "measure audio-token rank, similarity and SSM state updates",
        "Run audio through a trained model with hooks on the named SITES (e.g. encoder.out connector.out "
        "'lm.layers.*') and write one CSV row per clip and site: tau-effective rank, effective rank and "
        "mean pairwise cosine similarity of the audio tokens; with --state, also the Mamba-2 state-update "
        "distance between adjacent audio tokens per LM layer.",
    )
    model_args(p)
    p.add_argument("--audio", nargs="+", required=True, help="audio files")
    p.add_argument("--sites", nargs="+", default=["connector.out", "lm.layers.*"], help="probe sites; * matches layer numbers")
    p.add_argument("--tau", type=float, default=0.99, help="energy fraction for the tau-effective rank")
    p.add_argument("--state", action="store_true", help="also compute state-update distances (mean per clip and LM layer)")
    p.add_argument("--instruction", default="Write a caption for the audio clip.", help="text after the audio tokens")
    p.add_argument("--out", required=True, help="CSV to write")

    p = add_command(
        sub,
        "probe-lm",
        "measure token rank, similarity and SSM state updates inside a text LM",
        "Run texts through a local language model folder with hooks on the named SITES and write one CSV row "
        "per text, site and measure: tau-effective rank, effective rank, stable rank and mean pairwise cosine "
        "similarity of the tokens (all of them, or --span); with --state (Mamba-2 models), also the state-update "
        "distance between adjacent tokens per layer. Reads a Hugging Face model folder (config.json with "
        "model_type: Mamba2, GPT-2, Llama, ...) or a state-spaces/mamba2 folder; nothing is downloaded.",
    )
    p.add_argument("--model", required=True, help="local model folder (Hugging Face or state-spaces/mamba2 layout)")
    p.add_argument("--tokenizer", default=None, help="local tokenizer folder (default: --model; state-spaces folders ship none)")
    texts = p.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", nargs="+", help="texts to probe, one forward pass each")
    texts.add_argument("--text-file", help="UTF-8 file with one text per line")
    p.add_argument(
        "--sites",
        nargs="+",
        default=["lm.layers.*"],
        help="probe sites: stable names (lm.layers.N, lm.norm_f, ...) or module paths (transformer.h.0); "
        "* matches one name part, e.g. a layer number",
    )
    p.add_argument("--span", default=None, metavar="START:END", help="token positions to measure (default: every token)")
    p.add_argument("--tau", type=float, default=0.99, help="energy fraction for the tau-effective rank")
    p.add_argument("--state", action="store_true", help="also compute state-update distances (Mamba-2 models)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, help="CSV to write")

    p = add_command(
        sub,
        "data-summary",
        "count examples per split and task, and list the classes",
        "Print the corpus (clips, hours, classes per source), then build the examples of every split from a "
        "config's data settings and print how many there are per task and the most frequent classes.",
    )
    p.add_argument("--config", default=None, help="experiment YAML (default: the preset given by --preset)")
    p.add_argument("--preset", default="smoke", help="preset when no --config is given")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")

    p = add_command(
        sub,
        "cache-features",
        "render the scenes of a config's splits into the feature cache, in parallel",
        "Render every distinct scene (or audio file) of the given splits and tasks once into DATA_ROOT/features, "
        "the cache training and evaluation read, with --workers processes. Useful before several runs share "
        "one machine: they would otherwise render the same scenes at the same time. Already cached audio is "
        "skipped; a clip that fails is reported and the rest go on.",
    )
    p.add_argument("--config", default=None, help="experiment YAML (default: the preset given by --preset)")
    p.add_argument("--preset", default="smoke", help="preset when no --config is given")
    p.add_argument("--splits", nargs="+", default=["train", "valid", "test"], choices=("train", "valid", "test"))
    p.add_argument("--tasks", nargs="+", default=None, help="example tasks whose audio to render (default: all)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: every CPU core)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")

    p = add_command(
        sub,
        "convert",
        "write a public dataset as instruction JSON for data.json_train / data.json_test",
        "Read a dataset in its own format (AudioSet segment CSV, AudioCaps CSV, Clotho captions CSV, ESC-50 "
        "meta CSV, MMAU JSON, or OpenAQA JSON to re-root its audio) and write LTU/OpenAQA-format JSON with "
        "absolute audio paths, labels, choices and reference captions kept, for `data.source: openaqa`. "
        "Rows that cannot be used (missing fields, missing audio, unknown labels) are listed and skipped.",
    )
    p.add_argument("format", choices=sorted(CONVERTERS), help="the input's format")
    p.add_argument("input", help="the dataset's CSV or JSON file")
    p.add_argument("--audio-dir", default=None, help="the dataset's audio folder (required except for mmau and openaqa)")
    p.add_argument("--labels", default=None, help="audioset: class_labels_indices.csv")
    p.add_argument("--dataset", default="", help="dataset name written into each item (default: the reader's)")
    p.add_argument("--out", required=True, help="JSON file to write")
    return parser


def model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help="a run directory written by `sam train`")
    g.add_argument("--checkpoint", help="a SAM checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
