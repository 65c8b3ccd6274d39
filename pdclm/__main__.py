"""``python -m pdclm`` (and ``torchrun ... -m pdclm``) runs the CLI."""

import sys

from pdclm.cli import main

sys.exit(main())
