"""``python -m experiments.bench``: see `experiments.bench.cli`."""

import sys

from experiments.bench.cli import main

if __name__ == "__main__":  # importing the module (e.g. to check it imports) runs nothing
    sys.exit(main())
