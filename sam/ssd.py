"""Former path of `sam.model.ssd`: the same module object, so `import sam.ssd` and attribute patches keep working."""

import sys

import sam.model.ssd

sys.modules[__name__] = sam.model.ssd
