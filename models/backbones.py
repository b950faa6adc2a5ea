"""Classifier bodies that a stem is put in front of.

``build_backbone`` returns the body with its own first convolution removed, and the shape that
the stem must have to take its place, so any stem works with any body.
"""
import os
import pickle
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision

from utils.checkpoint import NUMPY_ARRAYS
from utils.errors import UserError


@dataclass
class StemShape:
    out_channels: int
    kernel_size: int
    stride: int
    padding: int


def conv_bn_relu(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A fast plain CNN for CPU runs at 32-96 px (about 60 MMACs at 64 px)."""

    def __init__(self, num_classes, widths=(32, 64, 128, 256)):
        super().__init__()
        self.stem = nn.Identity()  # replaced by the caller's stem: 3x3, stride 1, widths[0] out
        layers = [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.MaxPool2d(2), conv_bn_relu(cin, cout)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def _small(num_classes):
    return SmallCNN(num_classes), "stem", StemShape(32, 3, 1, 1)


def _densenet121(num_classes):
    net = torchvision.models.densenet121(weights=None, num_classes=num_classes)
    return net, "features.conv0", StemShape(64, 7, 2, 3)


def _resnet18(num_classes):
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    return net, "conv1", StemShape(64, 7, 2, 3)


BACKBONES = {"densenet121": _densenet121, "resnet18": _resnet18, "small": _small}
# Each body's classifier: pretrained weights never bring theirs, whatever their number of classes.
CLASSIFIERS = {"densenet121": "classifier", "resnet18": "fc", "small": "head.2"}
IMAGENET = "imagenet"


def build_backbone(name, num_classes, pretrained=None):
    """-> (body with an identity where its stem was, StemShape, stem weight from ``pretrained``).

    ``pretrained``: ``"imagenet"`` (torchvision's released weights), one of our checkpoints or run
    folders of a Task 1 model with this body (``models.loading.pretrained_state``: its plain form
    for the full channel set), or a local torchvision state dict file.
    """
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    body, stem_name, shape = BACKBONES[name](num_classes)
    stem_weight = None
    if pretrained:
        from .loading import pretrained_state  # it builds models, whose factories call this function

        source = imagenet_state_dict(name) if pretrained == IMAGENET else pretrained_state(pretrained, name, stem_name)
        stem_weight = load_pretrained(body, source, stem_name, CLASSIFIERS[name], pretrained)
    parent, _, attr = stem_name.rpartition(".")
    setattr(body.get_submodule(parent) if parent else body, attr, nn.Identity())
    return body, shape, stem_weight


def imagenet_state_dict(name):
    """torchvision's default ImageNet weights for ``name``, downloaded once into $TORCH_HOME."""
    if name not in torchvision.models.list_models():
        raise UserError(f"no ImageNet weights for backbone {name!r} (torchvision has none); "
                        "train it from scratch or pass a state dict file")
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if os.path.isfile(path):
        return torchvision_state(read_state_dict(path))
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot download ImageNet weights for {name} ({exc.__class__.__name__}: "
                        f"{str(exc).strip() or 'no network'}); offline, put {weights.url} at {path}") from None


def read_state_dict(path):
    """The mapping in a weights file: a state dict, or a file that holds one as ``state_dict``."""
    if not os.path.isfile(path):
        raise UserError(f"pretrained weights not found: {path}")
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAYS):  # our older checkpoints' RNG states
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"cannot read pretrained weights {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise UserError(f"pretrained weights {path} are not a state dict")
    return state


# torchvision's released DenseNet files name "norm1" as "norm.1"; torchvision renames them on load.
def torchvision_state(state):
    """The state dict in a weights file's mapping: itself, or the one it holds as ``state_dict``."""
    return state["state_dict"] if isinstance(state.get("state_dict"), dict) else state


_LEGACY_DENSENET = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def load_pretrained(body, state, stem_name, classifier, source):
    """Load a torchvision state dict into ``body``, its ``classifier`` left out (fine-tuning
    trains a new one) and every convolution loaded. Returns the stem's weight (the stem itself is
    not part of the body)."""
    state = {_LEGACY_DENSENET.sub(r"\1\2.", k): v for k, v in state.items()}
    own = body.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
              and not k.startswith(classifier + ".")}
    convs = [f"{n}.weight" for n, m in body.named_modules() if isinstance(m, nn.Conv2d) and n != stem_name]
    missing = [k for k in convs if k not in usable]
    if missing:
        raise UserError(f"pretrained weights {source} do not fit this backbone: {len(missing)} of "
                        f"{len(convs)} convolutions did not load (first: {missing[0]})")
    body.load_state_dict(usable, strict=False)
    print(f"pretrained {source}: loaded {len(usable)} of {len(own)} tensors of the body; "
          f"skipped {', '.join(sorted({k.rsplit('.', 1)[0] for k in own if k not in usable})) or 'none'}")
    return state.get(f"{stem_name}.weight")
