"""Train a Task 1 model (variable input channels). See README for examples."""
import sys

from data import DEFAULT_COMBOS
from train import main as train
from utils.errors import cli


@cli
def main(argv=None):
    return train(argv, __doc__, default_model="dwg", val_combos=",".join(DEFAULT_COMBOS))


if __name__ == "__main__":
    sys.exit(main())
