"""``python -m worknet.catalogue rebuild``: see :mod:`worknet.catalogue.tool`."""

import sys

from worknet.catalogue.tool import main

sys.exit(main())
