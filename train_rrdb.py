"""Train a Task 2 model (shallow networks against ResNet34). See README for examples."""
import sys

from train import main as train
from utils.errors import cli

# The parser's defaults, also read by whatever lists this script's runs (experiments.results).
DEFAULTS = {"default_model": "shallow", "val_combos": "RGB"}


@cli
def main(argv=None):
    return train(argv, __doc__, **DEFAULTS)


if __name__ == "__main__":
    sys.exit(main())
