"""`python -m sam.cli ...`: the `sam` command."""

import sys

from sam.cli import main

sys.exit(main())
