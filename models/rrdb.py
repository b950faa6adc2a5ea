"""Task 2: the original assignment's shallow models rebuilt (a residual dense block, and its
variant with a recurrent convolution), kept as baselines."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import conv_bn_relu
from .registry import register
from .rgb_only import RGBOnly


class ResidualDenseBlock(nn.Module):
    """Dense connections inside, a 1x1 local fusion back to the input width, a residual outside."""

    def __init__(self, channels, growth=32, layers=4):
        super().__init__()
        self.layers = nn.ModuleList(conv_bn_relu(channels + i * growth, growth) for i in range(layers))
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return x + self.fuse(torch.cat(feats, 1))


class RecurrentConv(nn.Module):
    """One 3x3 convolution applied ``steps`` times with shared weights (the RNN variant)."""

    def __init__(self, channels, steps=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(steps))

    def forward(self, x):
        h = x
        for bn in self.bns:
            h = F.relu(bn(self.conv(h)) + x)
        return h


class RRDBNet(nn.Module):
    """The original's shallow model rebuilt: stem, one residual dense block, transition, classifier."""

    def __init__(self, num_classes, channels=64, growth=32, width=128, recurrent_steps=0):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, channels, 3, stride=2),
            ResidualDenseBlock(channels, growth),
            conv_bn_relu(channels, width, 1), nn.AvgPool2d(2),
            RecurrentConv(width, recurrent_steps) if recurrent_steps else nn.Identity())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


@register("rrdb", task=2)
def rrdb(num_classes):
    return RGBOnly(RRDBNet(num_classes))


@register("rrdb_rnn", task=2)
def rrdb_rnn(num_classes):
    return RGBOnly(RRDBNet(num_classes, recurrent_steps=3))
