"""Former path of `lib.common` (kept for scripts not yet importing `from lib import common`): the same module object."""

import sys

from lib import common

sys.modules[__name__] = common
