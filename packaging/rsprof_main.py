"""Entry point of the one-file rsprof binary (packaging/rsprof.spec): the `rsprof` command."""

import sys

from rsprof.cli import main

if __name__ == "__main__":
    sys.exit(main())
