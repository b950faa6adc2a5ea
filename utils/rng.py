"""Seeding, and RNG states saved in a checkpoint and restored from it (a stop inside an epoch)."""
import random

import numpy as np
import torch

from .checkpoint import load_part
from .validate import file_field


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state():
    """RNG states in plain types and tensors only, so that checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
            "torch": torch.get_rng_state()}


def restore_rng(state, chan_gen):
    """The RNG states saved by a stop inside an epoch (``rng_state``, the channel generator)."""
    rng = file_field(state["path"], state, "rng", dict)

    def restore(_):
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])
        chan_gen.set_state(state["chan_gen"])
    load_part(state, "rng", restore)
