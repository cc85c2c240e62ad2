"""`python -m videogrpo` is the same as the `videogrpo` console script."""

import sys

from videogrpo.cli import main

sys.exit(main())
