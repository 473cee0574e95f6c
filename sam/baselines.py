"""Former path of `sam.eval.baselines`: the same module object, so `import sam.baselines` and attribute patches keep working."""

import sys

import sam.eval.baselines

sys.modules[__name__] = sam.eval.baselines
