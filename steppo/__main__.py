"""``python -m steppo`` (e.g. under ``torchrun -m steppo``) runs the ``steppo`` command line."""

import sys

from steppo.cli import main

sys.exit(main())
