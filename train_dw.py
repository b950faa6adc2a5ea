"""Train a Task 1 model (variable input channels). See README for examples."""
import sys

from data import DEFAULT_COMBOS
from train import main as train
from utils.errors import cli

# The parser's defaults, also read by whatever lists this script's runs (experiments.results).
DEFAULTS = {"default_model": "dwg", "val_combos": ",".join(DEFAULT_COMBOS)}


@cli
def main(argv=None):
    return train(argv, __doc__, **DEFAULTS)


if __name__ == "__main__":
    sys.exit(main())
