"""``python -m steppo.cli`` (same as ``python -m steppo``) runs the ``steppo`` command line."""

import sys

from steppo.cli import main

sys.exit(main())
