"""Classifier bodies that a stem is put in front of.

``build_backbone`` returns the body with its own first convolution removed, and the shape that
the stem must have to take its place, so any stem works with any body.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision

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


def build_backbone(name, num_classes, pretrained=None):
    """-> (body with an identity where its stem was, StemShape, stem weight from ``pretrained``)."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    body, stem_name, shape = BACKBONES[name](num_classes)
    stem_weight = load_pretrained(body, pretrained, stem_name) if pretrained else None
    parent, _, attr = stem_name.rpartition(".")
    setattr(body.get_submodule(parent) if parent else body, attr, nn.Identity())
    return body, shape, stem_weight


def load_pretrained(body, path, stem_name):
    """Load a local torchvision state dict; layers whose shape differs (the classifier) are skipped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot read pretrained weights {path}: {exc}") from None
    own = body.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"pretrained weights {path} match no layer of this backbone")
    body.load_state_dict(usable, strict=False)
    return usable.get(f"{stem_name}.weight")
