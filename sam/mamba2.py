"""Former path of `sam.model.mamba2`: the same module object, so `import sam.mamba2` and attribute patches keep working."""

import sys

import sam.model.mamba2

sys.modules[__name__] = sam.model.mamba2
