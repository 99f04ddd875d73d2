"""`python -m emorec` runs the CLI."""

import sys

from emorec.cli import main

sys.exit(main())
