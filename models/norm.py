"""BatchNorm with running statistics per channel combination (switchable BN's statistics).

A body fed R alone sees other activation statistics than one fed RGB. In training BatchNorm
normalises each batch with its own statistics, so every combination is trained with its own;
only the running statistics used at evaluation were shared, averaged over a mix of
combinations that no single combination has. Keeping one row of running statistics per
combination (Yu et al.'s switchable BN, statistics only; the affine parameters stay shared)
makes evaluation see what training saw.

Combinations are channel *sets*: a permutation shares its set's statistics, as the stem's
output does not depend on the order. With many channels the sets of a size share a row
(``combo_table``), so the rows grow as 3V - 2, not 2^V - 1.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


def combo_table(vocab):
    """-> ``{channel set: row}`` of a vocabulary, each set a ``frozenset`` of names, or an ``int``
    (a size) for the sets of that size that have no row of their own.

    Every set would need 2^V - 1 rows (8,191 for 13 bands). Instead each single channel, each
    set of all channels but one, and the full set keep their own row, and the sets of each other
    size share one: 3V - 2 rows. Up to three channels that is every set, in the order of their
    bit masks (so that RGB keeps its 7 rows as they were); the full set is always the last row.
    """
    return _table(tuple(vocab))


@functools.lru_cache
def _table(vocab):  # every forward pass looks its set up
    v = len(vocab)
    masks = sorted(m for m in range(1, 2 ** v) if bin(m).count("1") in (1, v - 1)) if v > 1 else []
    keys = [frozenset(vocab[i] for i in range(v) if m >> i & 1) for m in masks]
    keys += list(range(2, v - 1)) + [frozenset(vocab)]
    return {k: i for i, k in enumerate(dict.fromkeys(keys))}


def combo_index(channels, vocab):
    """Row of a channel set (a set with a channel the vocabulary lacks: the full set's)."""
    table = combo_table(vocab)
    key = frozenset(channels)
    if key in table:
        return table[key]
    if key <= set(vocab):
        return table[len(key)]
    return table[frozenset(vocab)]


def num_combos(vocab):
    return len(combo_table(vocab))


class ComboSelector:
    """The row every ``ComboBatchNorm2d`` of a model reads: one object shared by all of them, so
    that choosing the channel set for a pass is one assignment, not one per layer."""

    def __init__(self, index):
        self.index = index


class ComboBatchNorm2d(nn.Module):
    """``nn.BatchNorm2d`` with ``[combos, C]`` running statistics; ``selector.index`` picks the row
    (a ``ComboSelector`` that the layers of one model share; each layer has its own unless given one)."""

    def __init__(self, num_features, combos, eps=1e-5, momentum=0.1, selector=None):
        super().__init__()
        self.num_features, self.combos, self.eps, self.momentum = num_features, combos, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(combos, num_features))
        self.register_buffer("running_var", torch.ones(combos, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(combos, dtype=torch.long))
        self.selector = selector or ComboSelector(combos - 1)
        self.register_load_state_dict_pre_hook(self._load_hook)

    @classmethod
    def from_bn(cls, bn, combos, selector=None):
        """Every row starts from ``bn``'s statistics; the affine parameters are ``bn``'s own."""
        new = cls(bn.num_features, combos, bn.eps, bn.momentum, selector).to(bn.weight.device)
        new.weight, new.bias = bn.weight, bn.bias
        new.running_mean.copy_(bn.running_mean.expand(combos, -1))
        new.running_var.copy_(bn.running_var.expand(combos, -1))
        return new

    def _load_hook(self, module, state, prefix, *args):
        """A plain BatchNorm's ``[C]`` statistics (e.g. ``--init-from`` a plain model) fill every row."""
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            value = state.get(prefix + name)
            if value is not None and value.dim() == getattr(self, name).dim() - 1:
                state[prefix + name] = value.expand_as(getattr(self, name)).clone()

    def forward(self, x):
        k = self.selector.index
        if self.training:
            self.num_batches_tracked[k] += 1
        return F.batch_norm(x, self.running_mean[k], self.running_var[k], self.weight, self.bias,
                            self.training, self.momentum, self.eps)

    @torch.no_grad()
    def to_bn(self, combo):
        """An ``nn.BatchNorm2d`` holding row ``combo`` (deployment for one channel set)."""
        bn = nn.BatchNorm2d(self.num_features, self.eps, self.momentum).to(self.weight.device)
        bn.weight.copy_(self.weight)
        bn.bias.copy_(self.bias)
        bn.running_mean.copy_(self.running_mean[combo])
        bn.running_var.copy_(self.running_var[combo])
        bn.num_batches_tracked.copy_(self.num_batches_tracked[combo])
        return bn

    def extra_repr(self):
        return f"{self.num_features}, combos={self.combos}, eps={self.eps}, momentum={self.momentum}"


def convert_to_combo_bn(module, combos, selector=None):
    """Replace every ``nn.BatchNorm2d`` under ``module`` in place, all reading ``selector``;
    returns the new modules."""
    selector = selector or ComboSelector(combos - 1)
    converted = []
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            new = ComboBatchNorm2d.from_bn(child, combos, selector)
            setattr(module, name, new)
            converted.append(new)
        else:
            converted += convert_to_combo_bn(child, combos, selector)
    return converted


def freeze_combo_bn(module, combo):
    """Replace every ``ComboBatchNorm2d`` under ``module`` in place by its row ``combo``."""
    for name, child in module.named_children():
        if isinstance(child, ComboBatchNorm2d):
            setattr(module, name, child.to_bn(combo))
        else:
            freeze_combo_bn(child, combo)
    return module
