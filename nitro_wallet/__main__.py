"""``python -m nitro_wallet``: the same as the ``nitro-wallet`` console script."""

from __future__ import annotations

import sys

from nitro_wallet.cli import main

if __name__ == "__main__":
    sys.exit(main())
