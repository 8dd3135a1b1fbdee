"""``python -m pixelsmith`` (e.g. ``torchrun --nproc-per-node N -m pixelsmith generate ...``)."""

import sys

from pixelsmith.cli import main

sys.exit(main())
