"""Former path of `lib.controls` (kept for scripts not yet importing `from lib import controls`): the same module object."""

import sys

from lib import controls

sys.modules[__name__] = controls
