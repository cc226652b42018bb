"""``python -m jfdeploy.cli``: the ``jfdeploy`` command."""

import sys

from jfdeploy.cli import main

sys.exit(main())
