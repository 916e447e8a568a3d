"""`python -m inception ...` runs the command line."""

import sys

from inception.cli import main

sys.exit(main())
