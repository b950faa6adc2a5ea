"""Models from checkpoints: rebuilt from the registry, weights loaded and checked, or started from
the weights of another run (``--init-from``)."""

import os

import torch
import torch.nn as nn

from utils.checkpoint import check_classes, checked, load_checkpoint
from utils.errors import UserError

from .registry import create_model, list_models


def model_from_checkpoint(ckpt, ema=True):
    """The checkpoint's model with its weights: their moving average when the run kept one
    (``--ema``), unless ``ema`` is False."""
    if not ema and ckpt.get("averaged"):
        raise UserError(f"{ckpt['path']} holds only the moving average of the weights (written without --no-ema); "
                        "for the raw weights, --no-ema needs the run's checkpoint or an export made with --no-ema")
    weights = ckpt["ema"]["state_dict"] if ema and ckpt.get("ema") else ckpt["state_dict"]
    try:
        model = create_model(ckpt["model"], len(ckpt["classes"]), **ckpt["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UserError(f"{ckpt['path']}: its config {ckpt['config']} does not build model {ckpt['model']!r} "
                        f"({exc})") from None
    if ckpt.get("deployed"):
        model.deploy()
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"{ckpt['path']}: weights do not fit model {ckpt['model']!r} ({_first_reason(exc)})") from None
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{ckpt['path']}: {len(bad)} weight tensor(s) hold NaN or inf ({bad[0]}, ...); "
                        "a model with them predicts nothing")
    return model


def best_of(path):
    """A run folder means the checkpoint it kept as best (its last.pt only while there is none);
    a file is itself. Resuming reads last.pt through ``load_checkpoint`` instead."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "best.pt")):
        return os.path.join(path, "best.pt")
    return path


def checkpoint_file(path):
    """The file that ``path`` (a checkpoint, a run folder) names, links resolved: two names of one
    checkpoint give the same file."""
    path = os.path.realpath(best_of(path))
    return os.path.join(path, "last.pt") if os.path.isdir(path) else path


def check_distinct(paths, flag):
    """Each checkpoint named once: a second name of one would be evaluated again as a model of its own."""
    seen = {}
    for path in paths:
        file = checkpoint_file(path)
        if file in seen:
            raise UserError(f"{flag}: {seen[file]} and {path} are the same checkpoint ({file}); name each once")
        seen[file] = path


def load_model(path, classes, as_model=None, ema=True):
    """-> (checkpoint, model) for evaluation on data with these classes.

    ``as_model`` rebuilds the weights as another registered model with the same parameters;
    ``ema`` False takes the raw weights of a run that kept a moving average. Data whose class
    names differ from the checkpoint's is refused: an evaluation would score other classes.
    """
    ckpt = load_checkpoint(best_of(path))
    check_classes(ckpt, classes, strict=True)
    if as_model:
        ckpt["model"] = as_model
    return ckpt, model_from_checkpoint(ckpt, ema)


def init_from(model, path, classes):
    """Start ``model`` from the weights of one of our checkpoints, of this or another Task 1 model.

    Tensors whose names match load (a plain stem's kernel becomes the ``dwg`` stem's ``base``;
    plain BatchNorm statistics fill every channel set's row); the rest keep their initialisation
    and are listed.
    """
    ckpt = load_checkpoint(best_of(path))
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


def pretrained_state(path, backbone, stem_name):
    """The weights that ``--pretrained PATH`` starts a body and its stem from, in torchvision's
    names. One of our checkpoints (or run folders) gives its model's plain form for the full
    channel set (``for_channels``): the body as it ran on every channel (BatchNorm's full-set
    statistics) and the stem's kernel for them (a plain stem's as it is, ``dwg``'s generated one)
    as ``<stem_name>.weight``. Any other file is read as a torchvision state dict."""
    from .backbones import read_state_dict, torchvision_state  # backbones imports this module lazily too

    file = best_of(path)
    state = read_state_dict(file)
    if not {"model", "config", "classes", "state_dict"} <= set(state):
        return torchvision_state(state)
    ckpt = checked(state, file)
    if ckpt["model"] not in list_models(task=1):
        raise UserError(f"--pretrained {path}: a checkpoint of {ckpt['model']!r}, not of a Task 1 model; "
                        "pretrain with train_dw.py (e.g. --model plain_zero) or pass a torchvision state dict")
    if ckpt["config"].get("backbone") != backbone:
        raise UserError(f"--pretrained {path}: a checkpoint of the {ckpt['config'].get('backbone')!r} backbone; "
                        f"this model's is {backbone!r} (--backbone)")
    model = model_from_checkpoint(ckpt)
    stem, body = model.for_channels(model.vocab)
    state = body.state_dict()
    if isinstance(stem, nn.Conv2d):  # seed_dwg's stem makes its kernel from the pixels: the body alone
        state[f"{stem_name}.weight"] = stem.weight.detach()
    return state


def _first_reason(exc):
    """The first mismatch that ``load_state_dict`` reports (its message starts with a header line)."""
    text = str(exc)
    return text.splitlines()[1].strip() if "\n" in text else text
