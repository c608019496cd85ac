import sys

from mmray.cli import main

sys.exit(main())
