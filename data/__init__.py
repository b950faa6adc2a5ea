from .bands import read_bands  # noqa: F401
from .channels import DEFAULT_COMBOS, DEFAULT_VOCAB, combo_name, default_combos, parse_combo, parse_combo_list, rgb_of  # noqa: F401
from .datasets import SYNTHETIC, DataSpec, build_dataset, describe_root, list_fingerprint  # noqa: F401
