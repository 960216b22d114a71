"""`python -m runner.cli`: how backends, workers and tests start gpujob."""

import sys

from runner.cli.main import main

sys.exit(main())
