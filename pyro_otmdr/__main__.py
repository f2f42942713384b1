"""``python -m pyro_otmdr``: the ``otmdr`` command line (see :mod:`pyro_otmdr.cli`)."""

import sys

from .cli import main

sys.exit(main())
