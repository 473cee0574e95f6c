"""Former path of `sam.train.rng`: the same module object, so `import sam.rng` and attribute patches keep working."""

import sys

import sam.train.rng

sys.modules[__name__] = sam.train.rng
