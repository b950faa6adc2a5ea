"""Checkpoints that survive being killed, and that say what they hold (``models/loading.py``
builds models from them).

A checkpoint is a dict: ``model`` (registry name), ``config`` (its constructor arguments),
``classes``, ``state_dict`` and, for resuming, optimizer/scheduler/scaler states, ``epoch``
(epochs completed), ``step`` (batches done in the epoch after that), ``best_acc`` and RNG states.
"""
import os
import pickle
import sys
import zipfile

import numpy as np
import torch
from numpy._core import multiarray as np_multiarray

from .errors import UserError
from .files import write_atomic

REQUIRED = ("model", "config", "classes", "state_dict")
FIELD_TYPES = {"model": str, "config": dict, "classes": (list, tuple), "state_dict": dict, "args": dict,
               "ema": (dict, type(None))}
# Checkpoints written before RNG states were stored as lists hold a numpy array (data, no code).
NUMPY_ARRAYS = [np_multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def save_atomic(obj, path):
    """``torch.save`` that a kill or a full disk cannot leave half-written (``write_atomic``)."""
    write_atomic(path, lambda f: torch.save(obj, f), binary=True)


def load_checkpoint(path):
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        # weights_only: tensors and plain Python types, never code; a file that carries code fails.
        with torch.serialization.safe_globals(NUMPY_ARRAYS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"refusing to load {path}: it holds more than tensors and plain values, "
                        f"objects whose loading could run code ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read checkpoint {path}: truncated or corrupt ({exc})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        raise UserError(f"{path} is not a checkpoint of this project (needs {', '.join(REQUIRED)})")
    ckpt.setdefault("args", {})
    for key, kind in FIELD_TYPES.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise UserError(f"{path}: field {key!r} is a {type(ckpt[key]).__name__}, not a "
                            f"{kind.__name__ if isinstance(kind, type) else kind[0].__name__}; not a checkpoint of "
                            "this project, or a damaged one")
    if not all(isinstance(c, str) for c in ckpt["classes"]) or \
            not all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()):
        raise UserError(f"{path}: 'classes' must be names and 'state_dict' tensors; not a checkpoint of this project")
    ckpt["path"] = path
    return ckpt


def image_size(ckpt, given=None):
    """``given`` (a flag), else the size the checkpoint trained at."""
    size = given or ckpt["args"].get("img_size")
    if not isinstance(size, int) or size < 1:
        raise UserError(f"{ckpt['path']} records no training image size; pass --img-size")
    return size


def data_root(given, ckpt):
    """``--data-root`` when given; else the data the checkpoint was trained on, when it is here;
    else ``$DATA_ROOT``. The choice is printed, since it decides what the numbers are of."""
    if given:
        return given
    stored = ckpt.get("data")
    if stored == "synthetic" or (isinstance(stored, str) and os.path.isdir(stored)):
        print(f"data: {stored} (the checkpoint's; --data-root to use other data)")
        return stored
    if os.environ.get("DATA_ROOT"):
        print(f"data: {os.environ['DATA_ROOT']} ($DATA_ROOT; the checkpoint's data {stored} is not here)")
        return os.environ["DATA_ROOT"]
    raise UserError(f"{ckpt['path']} was trained on data at {stored}, which is not here; pass --data-root")


def check_classes(ckpt, classes):
    """The data's labels must mean what they meant in training. The same class names in another
    order are refused; other names (classes.txt given on one side only) are reported."""
    trained = list(ckpt["classes"])
    if len(trained) != len(classes):
        raise UserError(f"{ckpt['path']} was trained on {len(trained)} classes, "
                        f"but the data has {len(classes)}")
    if trained != list(classes):
        i = next(i for i, (a, b) in enumerate(zip(trained, classes)) if a != b)
        if sorted(trained) == sorted(classes):
            raise UserError(f"{ckpt['path']} was trained with label {i} = {trained[i]!r}, but in the data label {i} "
                            f"is {classes[i]!r}: the same classes under other labels")
        print(f"warning: {ckpt['path']} names label {i} {trained[i]!r}, the data {classes[i]!r}; "
              "assuming the labels mean the same classes", file=sys.stderr)
