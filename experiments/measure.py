"""Former path of `lib.measure` (kept for scripts not yet importing `from lib import measure`): the same module object."""

import sys

from lib import measure

sys.modules[__name__] = measure
