"""Former path of `sam.train.validate`: the same module object, so `import sam.validate` and attribute patches keep working."""

import sys

import sam.train.validate

sys.modules[__name__] = sam.train.validate
