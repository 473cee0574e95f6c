"""probes: model-agnostic representation analysis for Mamba-2 audio-language models.

Works on SAM, `sam.model.lm.MambaLM`, mamba_ssm's `MambaLMHeadModel` and transformers'
`Mamba2ForCausalLM` by hooking the real modules (never re-implementing a model):
- `run_with_cache` / `hooked`: record activations at stable site names (`probes.hooks`);
- `tau_effective_rank`, `windowed_tau_rank`, `effective_rank`, `stable_rank` (`probes.rank`), `token_similarity`
  (`probes.similarity`), and `token_measures` for tidy tables over cached sites (`probes.tables`);
- `state_update_distance`: exact SSM state-update distances per layer, head and token (`probes.state`);
- `probes.plots`: the figures' plotting helpers (imported on demand: it needs matplotlib).

This package imports nothing from `sam`.
"""

from .hooks import ActivationCache, expand_sites, hooked, run_with_cache, site_names
from .rank import effective_rank, stable_rank, tau_effective_rank, windowed_tau_rank
from .similarity import token_similarity
from .state import state_update_distance, state_update_distance_ref, state_updates
from .tables import token_measures

__all__ = [
    "ActivationCache",
    "effective_rank",
    "hooked",
    "run_with_cache",
    "expand_sites",
    "site_names",
    "stable_rank",
    "state_update_distance",
    "state_update_distance_ref",
    "state_updates",
    "tau_effective_rank",
    "token_measures",
    "token_similarity",
    "windowed_tau_rank",
]
