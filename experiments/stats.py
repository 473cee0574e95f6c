"""Former path of `lib.stats` (kept for scripts not yet importing `from lib import stats`): the same module object."""

import sys

from lib import stats

sys.modules[__name__] = stats
