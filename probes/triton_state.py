"""Former path of `probes.state.triton_path`: the same module object, so `from probes import triton_state` and
attribute patches (tile sizes, `triton`) keep working."""

import sys

from .state import triton_path

sys.modules[__name__] = triton_path
