"""``python -m pyro_otmdr``: the ``otmdr`` command line (see :mod:`pyro_otmdr.experiments.cli`)."""

import sys

from .experiments.cli import main

sys.exit(main())
