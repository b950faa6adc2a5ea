"""Checkpoints that survive being killed, and that say what they hold.

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

from models import create_model
from .errors import UserError
from .files import write_atomic

REQUIRED = ("model", "config", "classes", "state_dict")
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
    ckpt["path"] = path
    return ckpt


def model_from_checkpoint(ckpt):
    model = create_model(ckpt["model"], len(ckpt["classes"]), **ckpt["config"])
    if ckpt.get("deployed"):
        model.deploy()
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{ckpt['path']}: weights do not fit model {ckpt['model']!r} ({_first_reason(exc)})") from None
    bad = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{ckpt['path']}: {len(bad)} weight tensor(s) hold NaN or inf ({bad[0]}, ...); "
                        "a model with them predicts nothing")
    return model


def load_model(path, classes, as_model=None):
    """-> (checkpoint, model) for evaluation on data with these classes.

    ``as_model`` rebuilds the weights as another registered model with the same parameters.
    """
    ckpt = load_checkpoint(path)
    check_classes(ckpt, classes)
    if as_model:
        ckpt["model"] = as_model
    return ckpt, model_from_checkpoint(ckpt)


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


def init_from(model, path, classes):
    """Start ``model`` from the weights of one of our checkpoints, of this or another Task 1 model.

    Tensors whose names match load (a plain stem's kernel becomes the ``dwg`` stem's ``base``;
    plain BatchNorm statistics fill every channel set's row); the rest keep their initialisation
    and are listed.
    """
    ckpt = load_checkpoint(path)
    check_classes(ckpt, classes)
    if ckpt.get("deployed"):
        raise UserError(f"{path} holds a deployed model; start from a training checkpoint")
    try:
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights of {ckpt['model']!r} do not fit this model ({_first_reason(exc)})") from None
    state = model.state_dict()
    total = len(state)
    loaded = total - len(result.missing_keys)
    # BatchNorm's step counters share names across architectures: they alone are no start.
    learned = [k for k in state if k not in result.missing_keys and state[k].is_floating_point()]
    if not learned:
        raise UserError(f"{path}: no learned tensor of {ckpt['model']!r} fits this model "
                        f"({loaded} of {total} loaded, all step counters); --init-from takes a related model")
    new = sorted({k.rsplit(".", 1)[0] for k in result.missing_keys})
    print(f"initialised from {path} ({ckpt['model']}): {loaded} of {total} tensors loaded"
          + (f"; new: {', '.join(new)}" if new else ""))
    return model


def _first_reason(exc):
    """The first mismatch that ``load_state_dict`` reports (its message starts with a header line)."""
    text = str(exc)
    return text.splitlines()[1].strip() if "\n" in text else text
