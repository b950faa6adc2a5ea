"""Train a Task 2 model (shallow networks against ResNet34). See README for examples."""
import sys

from train import main as train
from utils.errors import cli


@cli
def main(argv=None):
    return train(argv, __doc__, default_model="shallow", val_combos="RGB")


if __name__ == "__main__":
    sys.exit(main())
