"""Task 1: classifiers that accept any combination of input channels.

Each model is a stem (``stems.py``) in front of a body (``backbones.py``). ``channel_aug`` is
the training-time channel augmentation the model is meant to be trained with; the entry script
uses it unless ``--channel-aug`` says otherwise.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.channels import DEFAULT_VOCAB, RGB, RGB_WAVELENGTHS, vocab_names
from utils.errors import UserError
from utils.validate import check

from .backbones import build_backbone
from .norm import combo_index, convert_to_combo_bn, freeze_combo_bn, num_combos
from .registry import register
from .stems import ChannelHyperStem, FilledStem, SeedDWGStem, interpolation

# Batches a row of BatchNorm statistics needs before evaluation trusts it (with momentum 0.1 its
# start is then under 60% of it). Among 13 bands the sandwich draws one set of twelve about once in
# 170 subsets: a 60-epoch EuroSAT run leaves such rows at 0-3 batches, and with them dwg lost half
# its accuracy on a band left out. Higher (20) took from short RGB runs the rows that had trained.
MIN_SEEN = 5


class ChannelClassifier(nn.Module):
    """``stem(x, channels)`` then ``body``. With ``combo_bn`` every BatchNorm of the body keeps
    running statistics per channel set (``models/norm.py``); a set that went through the model
    in training fewer than ``MIN_SEEN`` times is evaluated with the full set's statistics."""

    def __init__(self, stem, body, vocab, channel_aug, combo_bn=False):
        super().__init__()
        self.stem, self.body = stem, body
        self.vocab, self.channel_aug = tuple(vocab), channel_aug
        self._combo_bns = []
        if combo_bn:
            self._combo_bns = convert_to_combo_bn(self.body, num_combos(self.vocab))
            self.register_buffer("combo_seen", torch.zeros(num_combos(self.vocab), dtype=torch.long,
                                                           device=self.stem_device()))

    def add_bands(self, wavelengths):
        """Bands this model never trained on, ``{name: nm}`` (``ChannelHyperStem.add_bands``)."""
        if not hasattr(self.stem, "add_bands"):
            raise ValueError(f"a {type(self.stem).__name__} makes no kernel for a band it never trained on")
        self.stem.add_bands(wavelengths)

    @property
    def combo_bn(self):
        return bool(self._combo_bns)

    def stem_device(self):
        return next(self.parameters()).device

    def _select_statistics(self, channels):
        k = combo_index(channels, self.vocab)
        if self.training:
            self.combo_seen[k] += 1
        elif self.combo_seen[k] < MIN_SEEN:
            k = num_combos(self.vocab) - 1
        self._combo_bns[0].selector.index = k  # shared by every layer

    def forward(self, x, channels=None):
        channels = tuple(channels or self.vocab)
        if self._combo_bns:
            self._select_statistics(channels)
        return self.body(self.stem(x, channels))

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


# Bounds on the options (--model-opt): channel names (models/norm.py keeps 3V - 2 rows of BatchNorm
# statistics for V of them); hypernetwork sizes far above any design here, far below a failed allocation.
MAX_VOCAB, MAX_HYPER = 256, 4096


def check_options(backbone, vocab, pretrained, combo_bn, base=True, wavelengths=None, **sizes):
    """TypeError or ValueError for an option a Task 1 model cannot be built with."""
    check("backbone", backbone, str)
    names = list(vocab_names(vocab))
    bad = [n for n in names if not n or set(n) & set("+, \t") or n == "all"]
    if not 1 <= len(names) <= MAX_VOCAB or len(set(names)) != len(names) or bad:
        raise ValueError(f"vocab must be 1 to {MAX_VOCAB} distinct channel names (no '+', ',' or space), "
                         f"got {vocab!r}")
    if wavelengths is not None and (not isinstance(wavelengths, (list, tuple)) or len(wavelengths) != len(names)
                                    or not all(isinstance(w, (int, float)) and 0 < w < 1e7 for w in wavelengths)):
        raise ValueError(f"wavelengths must be one positive number (nm) per channel of {names}, got {wavelengths!r}")
    if pretrained is not None:
        check("pretrained", pretrained, str)
    for name, value in {"combo_bn": combo_bn, "base": base}.items():
        check(name, value, bool)
    for name, value in sizes.items():
        check(name, value, int, 1, MAX_HYPER)


def default_wavelengths(vocab, wavelengths):
    """Photos' R, G, B have nominal wavelengths (``data.channels.RGB_WAVELENGTHS``)."""
    if wavelengths is None and tuple(vocab) == RGB:
        return RGB_WAVELENGTHS
    return wavelengths


def adapt_stem(weight, vocab, wavelengths):
    """A pretrained RGB kernel ``[out, 3, k, k]`` for a stem over other channels: each channel
    takes the RGB slices mixed by its wavelength (``stems.interpolation``; without wavelengths
    their mean), all scaled by 3/V so that the full set's response keeps its size (timm's
    ``adapt_input_conv`` repeats and scales alike)."""
    if weight.shape[1] != 3 or tuple(vocab) == RGB:
        return weight
    if wavelengths is None:
        mix = torch.full((len(vocab), 3), 1 / 3)
    else:
        mix = torch.stack([interpolation(RGB_WAVELENGTHS, w) for w in wavelengths])
    return torch.einsum("vc,ocij->ovij", mix, weight) * (3 / len(vocab))


def check_stem(weight, shape, source):
    """A pretrained stem kernel must be one for this model's channels."""
    if tuple(weight.shape) != tuple(shape):
        raise UserError(f"--pretrained {source}: its stem kernel is {tuple(weight.shape)}, this model's {tuple(shape)} "
                         f"(out, channels, k, k): weights of another number of channels or another stem")


def _register_plain(name, fill, channel_aug, doc):
    """An ordinary stem over the full vocabulary in front of the body; ``fill`` for missing channels."""
    def factory(num_classes, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None, combo_bn=False,
                wavelengths=None):
        check_options(backbone, vocab, pretrained, combo_bn, wavelengths=wavelengths)
        vocab = vocab_names(vocab)
        body, shape, stem_weight = build_backbone(backbone, num_classes, pretrained)
        stem = FilledStem(shape.out_channels, shape.kernel_size, shape.stride, shape.padding, vocab, fill)
        if stem_weight is not None:
            stem_weight = adapt_stem(stem_weight, vocab, wavelengths)
            check_stem(stem_weight, stem.conv.weight.shape, pretrained)
            stem.conv.weight.data.copy_(stem_weight)
        return ChannelClassifier(stem, body, vocab, channel_aug, combo_bn)
    factory.__name__, factory.__doc__ = name, doc
    register(name, task=1)(factory)


_register_plain("plain_zero", "zero", "none", "Ordinary stem trained on RGB; missing channels are zeros.")
_register_plain("plain_mean", "mean", "none",
                "Ordinary stem trained on RGB; missing channels are the mean of the present ones.")
_register_plain("plain_dropout", "zero", "dropout",
                "Ordinary stem trained with random channel dropout; missing channels are zeros.")


@register("dwg", task=1)
def dwg(num_classes, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None,
        embed_dim=32, hidden=64, templates=16, base=True, combo_bn=True, wavelengths=None):
    """Our channel-adaptive stem with BatchNorm statistics per channel set, trained as a sandwich.

    ``base=False`` is the earlier stem (templates only); ``combo_bn=False`` shares statistics;
    ``wavelengths`` (nm, one per channel; R, G, B have nominal ones) let it take unseen bands.
    """
    check_options(backbone, vocab, pretrained, combo_bn, base, wavelengths, embed_dim=embed_dim, hidden=hidden,
                  templates=templates)
    vocab = vocab_names(vocab)
    body, shape, stem_weight = build_backbone(backbone, num_classes, pretrained)
    stem = ChannelHyperStem(shape.out_channels, shape.kernel_size, shape.stride, shape.padding,
                            vocab, embed_dim, hidden, templates, base, default_wavelengths(vocab, wavelengths))
    if stem_weight is not None and base:
        stem_weight = adapt_stem(stem_weight, vocab, wavelengths)
        check_stem(stem_weight, (shape.out_channels, len(vocab), shape.kernel_size, shape.kernel_size), pretrained)
        stem.load_state_dict({"conv.weight": stem_weight}, strict=False)
    return ChannelClassifier(stem, body, vocab, "sandwich", combo_bn)


@register("seed_dwg", task=1)
def seed_dwg(num_classes, backbone="densenet121", vocab=DEFAULT_VOCAB, pretrained=None):
    """The original design (kernel from per-image channel means), batched, trained with shuffling."""
    check_options(backbone, vocab, pretrained, False)
    vocab = vocab_names(vocab)
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
