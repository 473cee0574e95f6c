"""The namespace an experiment script uses: its flags and run configs (`args`), its outputs (`outputs`)
and the rule that turns a comparison over seeds into a verdict (`stats`).

It is plumbing only: it must never train, evaluate or compute a measurement.
"""

from sam.config import config_hash

from . import paper_numbers, stats
from .args import (
    DEFAULT_SEEDS,
    PAPER_INPUTS,
    PAPER_TEST_SETS,
    PAPER_TRAINING_NEEDS,
    PRESETS,
    REPO,
    Settings,
    default_preset,
    lm_sizes,
    missing_paper_inputs,
    paper_test_json,
    parse_args,
    preset_sizes,
    run_config,
    sizes_in,
    test_data,
)
from .outputs import (
    VERSIONED,
    bars,
    device_name,
    figure,
    git_state,
    library_versions,
    manifest_hash,
    mosaic,
    provenance,
    save_figure,
    write_outputs,
)
from .stats import Finding, compare, compare_equivalent, compare_not_better, fmt, per_seed, spread, summary

__all__ = [
    "DEFAULT_SEEDS",
    "PAPER_INPUTS",
    "PAPER_TEST_SETS",
    "PAPER_TRAINING_NEEDS",
    "PRESETS",
    "REPO",
    "VERSIONED",
    "Finding",
    "Settings",
    "bars",
    "compare",
    "compare_equivalent",
    "compare_not_better",
    "config_hash",
    "default_preset",
    "device_name",
    "figure",
    "fmt",
    "git_state",
    "library_versions",
    "lm_sizes",
    "manifest_hash",
    "missing_paper_inputs",
    "mosaic",
    "paper_numbers",
    "paper_test_json",
    "parse_args",
    "per_seed",
    "preset_sizes",
    "provenance",
    "run_config",
    "save_figure",
    "sizes_in",
    "spread",
    "stats",
    "summary",
    "test_data",
    "write_outputs",
]
