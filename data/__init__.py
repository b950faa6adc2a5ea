from .channels import DEFAULT_COMBOS, DEFAULT_VOCAB, parse_combo, parse_combo_list  # noqa: F401
from .datasets import SYNTHETIC, DataSpec, build_dataset, describe_root, list_fingerprint  # noqa: F401
