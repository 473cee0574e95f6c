"""The SAM paper's reported numbers, the one place the experiments read them from.

Source: T. Lee, J. Jung, H. Lee, "SAM: A Mamba-2 State-Space Audio-Language Model",
arXiv:2509.15680 v2 (Interspeech 2026). The full text is not available to this project: numbers
tagged "paper" are from the abstract and captions, numbers tagged "digest" from third-party
summaries of the full paper (column labels corrected as noted in the project's paper notes).
This module holds data (and the two row-label helpers below); it must never compute, round or
"adjust" a number.
"""

from __future__ import annotations

CITATION = "Lee, Jung, Lee. SAM: A Mamba-2 State-Space Audio-Language Model. arXiv:2509.15680 v2 (2026)."

# Main comparison (percent). Tag: digest. Keys: model -> metric -> value.
MAIN_TABLE: dict[str, dict[str, float]] = {
    "LTU-7B": {"ESC-50 acc": 83.1, "DCASE17 Mi-F1": 45.9, "FSD50K mAP": 46.3, "AudioSet mAP": 18.7},
    "GAMA-7B": {"ESC-50 acc": 82.6, "DCASE17 Mi-F1": 38.4, "FSD50K mAP": 47.8, "AudioSet mAP": 19.2},
    "ssLALM-2.8B (Mamba-1)": {"ESC-50 acc": 86.8, "DCASE17 Mi-F1": 47.9, "FSD50K mAP": 47.7, "AudioSet mAP": 19.4},
    "SAM-130M (r=256)": {"ESC-50 acc": 83.3, "DCASE17 Mi-F1": 47.3, "FSD50K mAP": 46.7, "AudioSet mAP": 19.9},
    "SAM-780M (r=256)": {"ESC-50 acc": 87.7, "DCASE17 Mi-F1": 47.7, "FSD50K mAP": 48.8, "AudioSet mAP": 21.1},
    "SAM-2.7B (r=256)": {"ESC-50 acc": 89.7, "DCASE17 Mi-F1": 48.7, "FSD50K mAP": 49.2, "AudioSet mAP": 21.1},
}
# Which paper row stands for each of our LM sizes (the cpu/gpu presets' stand-ins).
SAM_ROW_FOR_SIZE = {"small": "SAM-130M (r=256)", "medium": "SAM-780M (r=256)", "large": "SAM-2.7B (r=256)"}


def paper_label(row: str) -> str:
    """A row of the paper's tables, labelled as the paper's (never to be read as our measurement)."""
    return f"paper: {row}"


def ours_label(lm_size: str, d_model: int, n_layer: int, lora_rank: int | None = None) -> str:
    """Our row of one LM size, named for what it is: its actual width x depth (and LoRA rank), e.g.
    "ours, small LM (d128 x 2, LoRA r8)" - not the paper model it stands in for."""
    return f"ours, {lm_size} LM (d{d_model} x {n_layer}" + (f", LoRA r{lora_rank}" if lora_rank else "") + ")"


# Captioning and other single numbers for SAM-2.7B.
AUDIOCAPS_SPICE_2_7B = 17.6  # paper (abstract)
VOCALSOUND_ACC_2_7B = 70.9  # digest

# MMAU test-mini, Sound subset, accuracy in percent. Tag: abstract gives 22.8 -> 56.8; digest the decimals.
MMAU_SOUND: dict[str, float] = {"SAM-2.7B": 22.83, "SAM+OR-2.7B": 56.77, "Gemma 3n-4B": 50.27}

# Architecture (digest): encoder, tokens per 10 s clip per layout, LM sizes in parameters.
EAT_BASE_PARAMS = 88_000_000
TOKENS_PER_10S = {"concat": 64, "time_major": 512, "freq_major": 512}  # (b)/(c) plus "&&" separators
LM_PARAMS = {"130m": 130_000_000, "780m": 780_000_000, "2.7b": 2_700_000_000}  # nominal, from the names

# Ablations whose numbers are unknown: only the direction is reported (digest). run_all turns each
# into a finding with our measurement and a verdict.
FINDINGS: dict[str, str] = {
    "joint_finetuning": "Jointly finetuning the audio encoder beats keeping it frozen.",
    "encoder_matched": "An encoder finetuned with one SSM size works best with that size.",
    "rank_by_size": "Smaller SSMs end with lower-rank, more similar audio tokens.",
    "compact_tokens": "Long token sequences (layouts b/c) do not consistently beat compact tokens (layout a).",
    "compact_rank": "Long token sequences (layouts b/c) show lower tau-effective rank than layout a.",
    "lora_rank": "LoRA rank 256 beats rank 8, with a larger gap for smaller LMs.",
    "reasoning": "Instruction/reasoning supervision improves MMAU-style multiple-choice accuracy (22.8 -> 56.8).",
    "scaling": "Larger SSMs classify better (SAM-130M < 780M <= 2.7B on AudioSet mAP).",
}
