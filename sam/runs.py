"""Former path of `sam.train.runs`: the same module object, so `import sam.runs` and attribute patches keep working."""

import sys

import sam.train.runs

sys.modules[__name__] = sam.train.runs
