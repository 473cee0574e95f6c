"""Former path of `sam.model.connector`: the same module object, so `import sam.connector` and attribute patches keep working."""

import sys

import sam.model.connector

sys.modules[__name__] = sam.model.connector
