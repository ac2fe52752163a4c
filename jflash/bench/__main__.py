"""`python -m jflash.bench`: runs the benchmark's command line (jflash/bench/cli.py)."""

import sys

from jflash.bench.cli import main

sys.exit(main())
