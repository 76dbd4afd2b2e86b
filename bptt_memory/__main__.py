"""``python -m bptt_memory ...`` is the `bptt-memory` command."""

import sys

from .cli import main

sys.exit(main())
