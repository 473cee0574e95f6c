"""Former path of `lib.gate` (kept for scripts not yet importing `from lib import gate`): the same module object."""

import sys

from lib import gate

sys.modules[__name__] = gate
