"""``python -m steppo_agent.cli`` (e.g. under ``torchrun``) runs the ``steppo`` command line."""

import sys

from steppo_agent.cli import main

sys.exit(main())
