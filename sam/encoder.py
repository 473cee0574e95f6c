"""Former path of `sam.model.encoder`: the same module object, so `import sam.encoder` and attribute patches keep working."""

import sys

import sam.model.encoder

sys.modules[__name__] = sam.model.encoder
