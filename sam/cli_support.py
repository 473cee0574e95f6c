"""Former path of `sam.cli.support`: the same module object, so `import sam.cli_support` and attribute patches keep working."""

import sys

import sam.cli.support

sys.modules[__name__] = sam.cli.support
