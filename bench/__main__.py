"""`python -m bench`: run the chain and renderer benchmarks (see bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
