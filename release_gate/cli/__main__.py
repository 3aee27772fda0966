"""``python -m release_gate.cli``: the ``release-gate`` command."""

import sys

from . import main

sys.exit(main())
