"""Former path of `sam.eval` (evaluation runners): the same module object, so `from sam.evaluate import ...` keeps working."""

import sys

import sam.eval

sys.modules[__name__] = sam.eval
