"""``python -m videofusion.cli`` (and ``accelerate launch -m videofusion.cli``)."""

import sys

from videofusion.cli import main

sys.exit(main())
