"""Task 1: classifiers that accept any combination of input channels.

Each model is a stem (``stems.py``) in front of a body (``backbones.py``). ``channel_aug`` is
the training-time channel augmentation the model is meant to be trained with; the entry script
uses it unless ``--channel-aug`` says otherwise.
"""
import copy
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.channels import DEFAULT_VOCAB
from utils.validate import check

from .backbones import build_backbone
from .norm import combo_index, convert_to_combo_bn, freeze_combo_bn, num_combos
from .registry import register
from .stems import ChannelHyperStem, FilledStem, SeedDWGStem


class ChannelClassifier(nn.Module):
    """``stem(x, channels)`` then ``body``. With ``combo_bn`` every BatchNorm of the body keeps
    running statistics per channel set (``models/norm.py``); a set that never went through the
    model in training (nor ``recalibrate``) is evaluated with the full set's statistics (and,
    with ``combo_affine``, its scale and shift)."""

    def __init__(self, stem, body, vocab, channel_aug, combo_bn=False, combo_affine=False):
        super().__init__()
        self.stem, self.body = stem, body
        self.vocab, self.channel_aug = vocab, channel_aug
        self._combo_bns = []
        if combo_bn or combo_affine:
            self.enable_combo_bn(combo_affine)

    @property
    def combo_bn(self):
        return bool(self._combo_bns)

    def enable_combo_bn(self, affine=False):
        """Give every BatchNorm of the body statistics per channel set (idempotent)."""
        if not self._combo_bns:
            self._combo_bns = convert_to_combo_bn(self.body, num_combos(self.vocab), affine)
            self.register_buffer("combo_seen", torch.zeros(num_combos(self.vocab), dtype=torch.long,
                                                           device=self.stem_device()))
        return self

    def stem_device(self):
        return next(self.parameters()).device

    def _select_statistics(self, channels):
        k = combo_index(channels, self.vocab)
        if self.training:
            self.combo_seen[k] += 1
        elif not self.combo_seen[k]:
            k = num_combos(self.vocab) - 1
        self._combo_bns[0].selector.index = k  # shared by every layer

    def forward(self, x, channels=None):
        if isinstance(x, (list, tuple)):
            return self.forward_packed(x, channels)
        channels = tuple(channels or self.vocab)
        if self._combo_bns:
            self._select_statistics(channels)
        return self.body(self.stem(x, channels))

    def forward_packed(self, xs, channel_lists):
        """Several batches, each with its own channels, through the body as one batch (a packed
        sandwich): each batch has its own stem kernel, and every BatchNorm normalises each batch
        with its own statistics and running row, so the logits (concatenated in order) equal
        separate calls. Needs BatchNorm per channel set where the body has BatchNorm at all."""
        if len(xs) != len(channel_lists):
            raise ValueError(f"{len(xs)} batches but {len(channel_lists)} channel lists")
        if not self._combo_bns and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.body.modules()):
            raise ValueError("a packed forward needs BatchNorm statistics per channel set (combo_bn): shared "
                             "BatchNorm would mix the sets' statistics")
        features = torch.cat([self.stem(x, tuple(c)) for x, c in zip(xs, channel_lists)])
        if not self._combo_bns:
            return self.body(features)
        selector = self._combo_bns[0].selector
        groups = []
        for x, c in zip(xs, channel_lists):
            self._select_statistics(tuple(c))
            groups.append((selector.index, len(x)))
        selector.groups = groups
        try:
            return self.body(features)
        finally:
            selector.groups = None

    def for_channels(self, channels):
        """A plain network for one channel combination, equal to this model on it in eval mode
        (deployment, export): the stem as an ordinary convolution where it is one (its kernel for
        these channels), every BatchNorm holding the statistics this model would use for them."""
        channels = tuple(channels)
        model = copy.deepcopy(self).eval()
        if model._combo_bns:
            model._select_statistics(channels)
            freeze_combo_bn(model.body, model._combo_bns[0].selector.index)
        with torch.no_grad():
            stem = model.stem.as_conv(channels) if hasattr(model.stem, "as_conv") else \
                _WithChannels(model.stem, channels)
        return nn.Sequential(stem, model.body).eval()

    @torch.no_grad()
    def recalibrate(self, batches, combos=None):
        """Re-estimate each channel set's BatchNorm statistics exactly (a cumulative average)
        from ``batches`` of full-vocabulary images, the weights untouched ("precise BN").

        Every set of the vocabulary by default; converts the body to per-set statistics first.
        """
        self.enable_combo_bn()
        was_training = self.training
        self.eval()
        combos = combos or ["".join(c) for k in range(1, len(self.vocab) + 1)
                            for c in itertools.combinations(self.vocab, k)]
        for bn in self._combo_bns:
            bn.train()
            bn.momentum, bn.saved_momentum = None, bn.momentum
        for combo in combos:
            k = combo_index(combo, self.vocab)
            for bn in self._combo_bns:
                bn.running_mean[k].zero_()
                bn.running_var[k].fill_(1)
                bn.num_batches_tracked[k] = 0
            idx = [self.vocab.index(c) for c in combo]
            for x in batches:
                self._combo_bns[0].selector.index = k
                self.body(self.stem(x[:, idx], tuple(combo)))
            self.combo_seen[k] = max(int(self.combo_seen[k]), 1)
        for bn in self._combo_bns:
            bn.momentum = bn.saved_momentum
            del bn.saved_momentum
        return self.train(was_training)


# Bounds on the options (--model-opt): a vocabulary of V channels keeps BatchNorm statistics for
# 2^V - 1 channel sets; hypernetwork sizes far above any design here, far below a failed allocation.
MAX_VOCAB, MAX_HYPER = 8, 4096


def check_options(backbone, vocab, pretrained, combo_bn, combo_affine, base=True, **sizes):
    """TypeError or ValueError for an option a Task 1 model cannot be built with."""
    check("backbone", backbone, str)
    check("vocab", vocab, str)
    if not 1 <= len(vocab) <= MAX_VOCAB or len(set(vocab)) != len(vocab):
        raise ValueError(f"vocab must be 1 to {MAX_VOCAB} distinct channel letters, got {vocab!r}")
    if pretrained is not None:
        check("pretrained", pretrained, str)
    for name, value in {"combo_bn": combo_bn, "combo_affine": combo_affine, "base": base}.items():
        check(name, value, bool)
    for name, value in sizes.items():
        check(name, value, int, 1, MAX_HYPER)


def _register_plain(name, fill, channel_aug, doc):
    """An ordinary stem over the full vocabulary in front of the body; ``fill`` for missing channels."""
    def factory(num_classes, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None, combo_bn=False,
                combo_affine=False):
        check_options(backbone, vocab, pretrained, combo_bn, combo_affine)
        body, shape, stem_weight = build_backbone(backbone, num_classes, pretrained)
        stem = FilledStem(shape.out_channels, shape.kernel_size, shape.stride, shape.padding, vocab, fill)
        if stem_weight is not None and stem_weight.shape == stem.conv.weight.shape:
            stem.conv.weight.data.copy_(stem_weight)
        return ChannelClassifier(stem, body, vocab, channel_aug, combo_bn, combo_affine)
    factory.__name__, factory.__doc__ = name, doc
    register(name, task=1)(factory)


_register_plain("plain_zero", "zero", "none", "Ordinary stem trained on RGB; missing channels are zeros.")
_register_plain("plain_mean", "mean", "none",
                "Ordinary stem trained on RGB; missing channels are the mean of the present ones.")
_register_plain("plain_dropout", "zero", "dropout",
                "Ordinary stem trained with random channel dropout; missing channels are zeros.")


@register("dwg", task=1)
def dwg(num_classes, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None,
        embed_dim=32, hidden=64, templates=16, base=True, combo_bn=True, combo_affine=False):
    """Our channel-adaptive stem with BatchNorm statistics per channel set, trained as a sandwich.

    ``base=False`` is the earlier stem (templates only); ``combo_bn=False`` shares statistics;
    ``combo_affine`` gives each set its own BatchNorm scale and shift too.
    """
    check_options(backbone, vocab, pretrained, combo_bn, combo_affine, base, embed_dim=embed_dim, hidden=hidden,
                  templates=templates)
    body, shape, stem_weight = build_backbone(backbone, num_classes, pretrained)
    stem = ChannelHyperStem(shape.out_channels, shape.kernel_size, shape.stride, shape.padding,
                            vocab, embed_dim, hidden, templates, base)
    if stem_weight is not None and base:
        stem.load_state_dict({"conv.weight": stem_weight}, strict=False)
    return ChannelClassifier(stem, body, vocab, "sandwich", combo_bn, combo_affine)


@register("seed_dwg", task=1)
def seed_dwg(num_classes, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None):
    """The original design (kernel from per-image channel means), batched, trained with shuffling."""
    check_options(backbone, vocab, pretrained, False, False)
    body, shape, _ = build_backbone(backbone, num_classes, pretrained)
    stem = SeedDWGStem(shape.out_channels, shape.kernel_size, shape.stride, shape.padding, len(vocab))
    return ChannelClassifier(_Positional(stem, len(vocab)), body, vocab, channel_aug="shuffle")


class _WithChannels(nn.Module):
    """A stem whose kernel depends on the pixels (seed_dwg), called with fixed channel names."""

    def __init__(self, stem, channels):
        super().__init__()
        self.stem, self.channels = stem, channels

    def forward(self, x):
        return self.stem(x, self.channels)


class _Positional(nn.Module):
    """Pads missing channels with zeros at the end: the seed design cannot tell channels apart."""

    def __init__(self, stem, full):
        super().__init__()
        self.stem, self.full = stem, full

    def forward(self, x, channels):
        return self.stem(F.pad(x, (0, 0, 0, 0, 0, self.full - x.shape[1])))
