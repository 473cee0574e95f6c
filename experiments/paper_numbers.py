"""Former path of `lib.paper_numbers` (kept for scripts not yet importing `from lib import paper_numbers`): the same module object."""

import sys

from lib import paper_numbers

sys.modules[__name__] = paper_numbers
