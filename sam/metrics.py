"""Former path of `sam.eval.metrics`: the same module object, so `import sam.metrics` and attribute patches keep working."""

import sys

import sam.eval.metrics

sys.modules[__name__] = sam.eval.metrics
