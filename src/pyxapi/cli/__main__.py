"""`python -m pyxapi.cli` is `xe`."""

import sys

from pyxapi.cli.xe import main

sys.exit(main())
