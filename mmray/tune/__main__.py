"""`python -m mmray.tune --space gmm.yaml`: the main entry."""

import sys

from mmray.cli import tune_main

sys.exit(tune_main())
