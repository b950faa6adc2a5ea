"""Checkpoints that survive being killed, and that say what they hold.

A checkpoint is a dict: ``model`` (registry name), ``config`` (its constructor arguments),
``classes``, ``state_dict`` and, for resuming, optimizer/scheduler/scaler states, ``epoch``
(epochs completed), ``step`` (batches done in the epoch after that), ``best_acc`` and RNG states.
"""
import os
import pickle
import tempfile
import zipfile

import numpy as np
import torch
from numpy._core import multiarray as np_multiarray

from models import create_model
from .errors import UserError

REQUIRED = ("model", "config", "classes", "state_dict")
# Checkpoints written before RNG states were stored as lists hold a numpy array (data, no code).
NUMPY_ARRAYS = [np_multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def save_atomic(obj, path):
    """Write to a temporary file beside ``path``, fsync, then rename over it: a kill at any
    moment leaves either the old file or the new one, never a truncated one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):  # a full disk, a folder gone read-only
            raise UserError(f"cannot write {path}: {exc.strerror or exc}; the previous file is kept") from None
        raise


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
    if len(ckpt["classes"]) != len(classes):
        raise UserError(f"{ckpt['path']} was trained on {len(ckpt['classes'])} classes, "
                        f"but the data has {len(classes)}")


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
    total = len(model.state_dict())
    loaded = total - len(result.missing_keys)
    if loaded == 0:
        raise UserError(f"{path}: no tensor of {ckpt['model']!r} fits this model")
    new = sorted({k.rsplit(".", 1)[0] for k in result.missing_keys})
    print(f"initialised from {path} ({ckpt['model']}): {loaded} of {total} tensors loaded"
          + (f"; new: {', '.join(new)}" if new else ""))
    return model


def _first_reason(exc):
    """The first mismatch that ``load_state_dict`` reports (its message starts with a header line)."""
    text = str(exc)
    return text.splitlines()[1].strip() if "\n" in text else text
