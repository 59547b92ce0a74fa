"""`python -m sunfish ...` (and `torchrun -m sunfish ...`): the same command line as `sunfish`."""

import sys

from sunfish.cli import main

sys.exit(main())
