"""``python -m certs`` runs the ``qemud-certs`` CLI (for checkouts without the console script)."""

import sys

from certs.cli import main

sys.exit(main())
