"""Former path of `lib.rows` (kept for scripts not yet importing `from lib import rows`): the same module object."""

import sys

from lib import rows

sys.modules[__name__] = rows
