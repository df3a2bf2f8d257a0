"""``python -m hrpo.cli`` (how ``hrpo sweep`` and ``accelerate launch -m hrpo.cli`` start runs)."""

import sys

from hrpo.cli import main

sys.exit(main())
