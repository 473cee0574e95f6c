"""Former path of `sam.cli.infer`: the same module object, so `import sam.infer` and attribute patches keep working."""

import sys

import sam.cli.infer

sys.modules[__name__] = sam.cli.infer
