"""Entry point: ``python main.py --parameters_path configurations/<folder>/<run>.json --seed 0``."""

import sys

from clad.cli import main

if __name__ == "__main__":
    sys.exit(main())
