"""`python -m groundstation` — the same as the `groundstation` console script."""

import sys

from groundstation.cli import main


def run() -> None:
    """Console-script entry: exit with main()'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
