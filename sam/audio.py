"""Former path of `sam.model.audio`: the same module object, so `import sam.audio` and attribute patches keep working."""

import sys

import sam.model.audio

sys.modules[__name__] = sam.model.audio
