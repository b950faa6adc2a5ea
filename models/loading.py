"""Models from checkpoints: rebuilt from the registry, weights loaded and checked, or started from
the weights of another run (``--init-from``)."""

import os

import torch
import torch.nn as nn

from data.channels import RGB, vocab_names
from utils.checkpoint import check_classes, checked, load_checkpoint
from utils.errors import UserError

from .channel_models import default_wavelengths
from .norm import combo_index, combo_table, num_combos
from .registry import create_model, list_models
from .stems import interpolation


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
    weights = ckpt["state_dict"]
    old_vocab = vocab_names(ckpt["config"].get("vocab", "RGB"))
    if hasattr(model, "vocab") and old_vocab != model.vocab:
        weights = onto_vocab(weights, old_vocab, ckpt["config"].get("wavelengths"), model)
    try:
        result = model.load_state_dict(weights, strict=False)
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


def onto_vocab(state, old_vocab, old_waves, model):
    """A Task 1 state dict over ``old_vocab`` rewritten for ``model``'s vocabulary (``--init-from``
    onto more or other channels). A channel of both keeps its weights; a new one's embedding is
    interpolated by wavelength from the old channels (``stems.interpolation``; their mean where
    either side has no wavelengths) and its base kernel starts at zero, so that on the old
    channels the model computes what it computed (a new channel alone is then seen as the old
    stem sees a grey image). BatchNorm rows (``norm.combo_table``): a set of old channels takes
    its old row (a size's shared row: the mean of the old rows of that size), any other the old
    full set's, marked unseen."""
    old_waves = old_waves or default_wavelengths(old_vocab, None)
    new_waves = getattr(model.stem, "wavelengths", None)
    state = dict(state)
    if "stem.embed.weight" in state:
        old = state["stem.embed.weight"]
        rows = [old[old_vocab.index(c)] if c in old_vocab else
                (interpolation(old_waves, new_waves[i]) @ old if old_waves and new_waves else old.mean(0))
                for i, c in enumerate(model.vocab)]
        state["stem.embed.weight"] = torch.stack(rows)
    if state.get("stem.base") is not None:
        old = state["stem.base"]
        state["stem.base"] = torch.stack([old[old_vocab.index(c)] if c in old_vocab else torch.zeros_like(old[0])
                                          for c in model.vocab])
    if "combo_seen" in state:
        source = combo_sources(old_vocab, model.vocab)
        for key in [k for k in state if k == "combo_seen" or k.rsplit(".", 1)[-1] in COMBO_BUFFERS]:
            value = state[key]
            if value.shape[0] != num_combos(old_vocab):
                continue
            state[key] = torch.stack([value[rows].float().mean(0).to(value.dtype) if seen else
                                      (value[rows[0]] if value.is_floating_point() else torch.zeros_like(value[0]))
                                      for rows, seen in source])
    return state


COMBO_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def combo_sources(old_vocab, new_vocab):
    """For each BatchNorm row of ``new_vocab``: (the old rows it is made from, whether it was seen)."""
    old_table, full = combo_table(old_vocab), num_combos(old_vocab) - 1
    sources = []
    for key in combo_table(new_vocab):
        if isinstance(key, int):  # a size's shared row: the old sets of that size
            rows = sorted({combo_index(k, old_vocab) for k in old_table if not isinstance(k, int) and len(k) == key
                           and k <= set(old_vocab)})
            sources.append((rows, True) if rows else ([full], False))
        elif key <= set(old_vocab):
            sources.append(([combo_index(key, old_vocab)], True))
        else:
            sources.append(([full], False))
    return sources


def admit_bands(model, bands, wavelengths, where):
    """Let ``model`` take the data's ``bands`` it never trained on, by their ``wavelengths``
    (``ChannelClassifier.add_bands``); one line naming ``where`` when it cannot."""
    unseen = [b for b in bands if b not in getattr(model, "vocab", bands)]
    if not unseen:
        return model
    if wavelengths is None or not hasattr(model, "add_bands"):
        raise UserError(f"{where} never trained on band {unseen[0]!r}, and the data gives no wavelength "
                        "(bands.txt) for the model to make a kernel from")
    try:
        model.add_bands({b: wavelengths[list(bands).index(b)] for b in unseen})
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    return model


def model_and_bands(ckpt, ema=True):
    """A checkpoint's model and the bands of its images in file order (R, G, B for photos); a
    multi-band model is made to take every band of its data (``admit_bands``)."""
    model, bands = model_from_checkpoint(ckpt, ema), ckpt.get("bands")
    if not bands:
        return model, RGB
    names = tuple(bands["names"])
    return admit_bands(model, names, bands.get("wavelengths"), ckpt["path"]), names


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
