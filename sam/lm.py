"""Former path of `sam.model.lm`: the same module object, so `import sam.lm` and attribute patches keep working."""

import sys

import sam.model.lm

sys.modules[__name__] = sam.model.lm
