"""Former path of `sam.eval.annotate`: the same module object, so `import sam.evaluate_baselines` and attribute patches keep working."""

import sys

import sam.eval.annotate

sys.modules[__name__] = sam.eval.annotate
