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

from .errors import MAX_EPOCHS, MAX_IMG_SIZE, UserError
from .files import write_atomic
from .validate import file_field, mapping_of

# Each field's kind and bounds (``utils.validate.check``); those marked optional a checkpoint of
# weights only (export.py, test_rrdb.py --save-deployed) leaves out, and a resume needs RESUME.
FIELDS = {
    "model": {"kind": str}, "config": {"kind": dict}, "classes": {"kind": list, "each": str},
    "state_dict": {"kind": dict}, "args": {"kind": dict, "optional": True},
    "ema": {"kind": dict, "optional": True}, "epoch": {"kind": int, "low": 0, "high": MAX_EPOCHS, "optional": True},
    "step": {"kind": int, "low": 0, "optional": True},
    "best_acc": {"kind": float, "low": -1, "high": 1, "optional": True},
    "best_epoch": {"kind": int, "low": 1, "optional": True}, "optimizer": {"kind": dict, "optional": True},
    "scheduler": {"kind": dict, "optional": True}, "scaler": {"kind": dict, "optional": True},
    "rng": {"kind": dict, "optional": True}, "chan_gen": {"kind": torch.Tensor, "optional": True},
    "lists": {"kind": dict, "optional": True},
    "epoch_tally": {"kind": list, "each": float, "length": 5, "optional": True},
    "criterion": {"kind": dict, "optional": True}, "data": {"kind": str, "optional": True},
    "deployed": {"kind": bool, "optional": True}, "averaged": {"kind": bool, "optional": True},
    "bands": {"kind": dict, "optional": True},
}
# Fields inside those above, checked when the field that holds them is there.
INNER = {
    ("args", "epochs"): {"kind": int, "low": 1, "high": MAX_EPOCHS, "optional": True},
    ("args", "img_size"): {"kind": int, "low": 1, "high": MAX_IMG_SIZE, "optional": True},
    ("args", "seed"): {"kind": int, "low": 0, "optional": True},
    ("args", "teacher"): {"kind": str, "optional": True},
    ("ema", "state_dict"): {"kind": dict}, ("ema", "n_averaged"): {"kind": int, "low": 0},
    ("optimizer", "param_groups"): {"kind": list, "each": dict}, ("optimizer", "state"): {"kind": dict},
    ("scheduler", "last_epoch"): {"kind": int, "low": 0},
    ("rng", "python"): {"kind": list, "length": 3}, ("rng", "numpy"): {"kind": list, "length": 5},
    ("rng", "torch"): {"kind": torch.Tensor},
    ("criterion", "steps"): {"kind": int, "low": 0},
    ("bands", "names"): {"kind": list, "each": str}, ("bands", "mean"): {"kind": list, "each": float},
    ("bands", "std"): {"kind": list, "each": float}, ("bands", "dtype"): {"kind": str},
}
RESUME = ("epoch", "step", "best_acc", "optimizer", "scheduler", "args")
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
    return checked(ckpt, path)


def checked(ckpt, path):
    """A loaded checkpoint of ``path`` whose fields all hold (``check_fields``), with its path."""
    check_fields(mapping_of(path, ckpt, "the checkpoint"), path)
    ckpt.setdefault("args", {})
    ckpt["path"] = path
    return ckpt


def check_fields(ckpt, path, needed=()):
    """Every field of ``FIELDS`` and ``INNER`` a checkpoint has, and those of ``needed``, of the
    right kind within bounds, and consistent: no more epochs done than its schedule has."""
    for key, rule in FIELDS.items():
        file_field(path, ckpt, key, **{**rule, "optional": rule.get("optional", False) and key not in needed})
    for (outer, key), rule in INNER.items():
        if ckpt.get(outer) is not None:
            file_field(path, ckpt[outer], key, within=outer, **rule)
    if not ckpt["classes"]:
        raise UserError(f"{path}: field 'classes' is empty; a classifier has at least one class")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()):
        raise UserError(f"{path}: field 'state_dict' must map names to tensors; not a checkpoint of this project")
    epochs, done = (ckpt.get("args") or {}).get("epochs"), ckpt.get("epoch")
    if epochs is not None and done is not None and (done > epochs or (done == epochs and ckpt.get("step"))):
        raise UserError(f"{path}: field 'epoch' says {done} epoch(s) and {ckpt.get('step') or 0} step(s) done of a "
                        f"{epochs}-epoch schedule (args.epochs); a damaged checkpoint")
    if ckpt.get("best_epoch") is not None and done is not None and ckpt["best_epoch"] > done:
        raise UserError(f"{path}: field 'best_epoch' {ckpt['best_epoch']} is beyond the {done} epoch(s) done")


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


def check_classes(ckpt, classes, strict=False):
    """The data's labels must mean what they meant in training. The same class names in another
    order are refused; other names (classes.txt given on one side only) are reported, or refused
    when ``strict`` (an evaluation: its numbers would be of classes the model was not taught)."""
    trained = list(ckpt["classes"])
    if len(trained) != len(classes):
        raise UserError(f"{ckpt['path']} was trained on {len(trained)} classes, "
                        f"but the data has {len(classes)}")
    if trained != list(classes):
        i = next(i for i, (a, b) in enumerate(zip(trained, classes)) if a != b)
        if sorted(trained) == sorted(classes):
            raise UserError(f"{ckpt['path']} was trained with label {i} = {trained[i]!r}, but in the data label {i} "
                            f"is {classes[i]!r}: the same classes under other labels")
        if strict:
            raise UserError(f"{ckpt['path']} names label {i} {trained[i]!r}, the data {classes[i]!r}: other classes "
                            "(give the data the checkpoint was trained on, with its classes.txt if it had one)")
        print(f"warning: {ckpt['path']} names label {i} {trained[i]!r}, the data {classes[i]!r}; "
              "assuming the labels mean the same classes", file=sys.stderr)


def load_part(ckpt, name, load):
    """``load`` the checkpoint's field ``name``; a state that does not fit this run is one line
    naming the checkpoint and the field, not a traceback."""
    try:
        load(ckpt[name])
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # past a header line
        raise UserError(f"{ckpt['path']}: field {name!r} does not fit this run ({reason}); "
                        "a damaged checkpoint, or one of another run") from None
