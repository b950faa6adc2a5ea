"""Task 1: classifiers that accept any combination of input channels.

Each model is a stem (``stems.py``) in front of a body (``backbones.py``). ``channel_aug`` is
the training-time channel augmentation the model is meant to be trained with; the entry script
uses it unless ``--channel-aug`` says otherwise.
"""
import torch.nn as nn
import torch.nn.functional as F

from data.channels import DEFAULT_VOCAB
from .backbones import build_backbone
from .registry import register
from .stems import ChannelHyperStem, FilledStem, SeedDWGStem


class ChannelClassifier(nn.Module):
    def __init__(self, stem, body, vocab, channel_aug):
        super().__init__()
        self.stem, self.body = stem, body
        self.vocab, self.channel_aug = vocab, channel_aug

    def forward(self, x, channels=None):
        return self.body(self.stem(x, tuple(channels or self.vocab)))


def _plain(num_classes, fill, channel_aug, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None):
    body, shape, stem_weight = build_backbone(backbone, num_classes, pretrained)
    stem = FilledStem(shape.out_channels, shape.kernel_size, shape.stride, shape.padding, vocab, fill)
    if stem_weight is not None and stem_weight.shape == stem.conv.weight.shape:
        stem.conv.weight.data.copy_(stem_weight)
    return ChannelClassifier(stem, body, vocab, channel_aug)


@register("dwg", task=1)
def dwg(num_classes, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None,
        embed_dim=32, hidden=64, templates=16):
    """Our channel-adaptive stem, trained with hierarchical channel sampling."""
    body, shape, _ = build_backbone(backbone, num_classes, pretrained)
    stem = ChannelHyperStem(shape.out_channels, shape.kernel_size, shape.stride, shape.padding,
                            vocab, embed_dim, hidden, templates)
    return ChannelClassifier(stem, body, vocab, channel_aug="subset")


@register("seed_dwg", task=1)
def seed_dwg(num_classes, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None):
    """The original design (kernel from per-image channel means), batched, trained with shuffling."""
    body, shape, _ = build_backbone(backbone, num_classes, pretrained)
    stem = SeedDWGStem(shape.out_channels, shape.kernel_size, shape.stride, shape.padding, len(vocab))
    return ChannelClassifier(_Positional(stem, len(vocab)), body, vocab, channel_aug="shuffle")


class _Positional(nn.Module):
    """Pads missing channels with zeros at the end: the seed design cannot tell channels apart."""

    def __init__(self, stem, full):
        super().__init__()
        self.stem, self.full = stem, full

    def forward(self, x, channels):
        return self.stem(F.pad(x, (0, 0, 0, 0, 0, self.full - x.shape[1])))


@register("plain_zero", task=1)
def plain_zero(num_classes, **config):
    """Ordinary stem trained on RGB; missing channels are zeros."""
    return _plain(num_classes, "zero", "none", **config)


@register("plain_mean", task=1)
def plain_mean(num_classes, **config):
    """Ordinary stem trained on RGB; missing channels are the mean of the present ones."""
    return _plain(num_classes, "mean", "none", **config)


@register("plain_dropout", task=1)
def plain_dropout(num_classes, **config):
    """Ordinary stem trained with random channel dropout; missing channels are zeros."""
    return _plain(num_classes, "zero", "dropout", **config)
