"""Channel combinations: naming, selecting and sampling input channels of a batch.

A combination is a string of channel letters from a vocabulary (``"RGB"`` by default), e.g.
``"RG"``, ``"B"`` or ``"BGR"`` (a permutation). Images are always loaded with every channel of
the vocabulary, in vocabulary order; these functions then pick and reorder channels on whole
batches, and return the names of the channels they kept so that a model can tell which is which.
"""
import torch

from utils.errors import UserError

DEFAULT_VOCAB = "RGB"
DEFAULT_COMBOS = ("RGB", "RG", "RB", "GB", "R", "G", "B")


def parse_combo(combo, vocab=DEFAULT_VOCAB):
    """Validate a combination string and return it as a tuple of channel letters."""
    if not combo:
        raise UserError(f"empty channel combination (use letters of {vocab!r}, e.g. 'RG')")
    unknown = [c for c in combo if c not in vocab]
    if unknown:
        raise UserError(f"unknown channel {unknown[0]!r} in combination {combo!r}; "
                        f"channels are {', '.join(vocab)}")
    repeated = sorted({c for c in combo if combo.count(c) > 1})
    if repeated:
        raise UserError(f"channel {repeated[0]!r} repeated in combination {combo!r}")
    return tuple(combo)


def parse_combo_list(text, vocab=DEFAULT_VOCAB):
    """``"RGB,RG,B"`` -> ``["RGB", "RG", "B"]``, each validated."""
    combos = [c.strip() for c in text.split(",")]
    seen = set()
    for c in combos:
        key = "".join(parse_combo(c, vocab))
        if key in seen:  # it would be evaluated twice and weigh twice in a mean
            raise UserError(f"combination {c!r} is listed twice in {text!r}")
        seen.add(key)
    return combos


def select(x, combo, vocab=DEFAULT_VOCAB):
    """Keep the channels of ``combo`` (in its order) from a batch laid out in vocabulary order."""
    names = parse_combo(combo, vocab)
    return x[:, [vocab.index(c) for c in names]], names


def shuffle(x, names, generator=None):
    """Permute the channels of a batch together with their names (the original's augmentation)."""
    perm = torch.randperm(len(names), generator=generator).tolist()
    return x[:, perm], tuple(names[i] for i in perm)


def sample_subset(x, names, generator=None, single_prob=None):
    """Hierarchical channel sampling (ChannelViT): draw how many channels, then which ones.

    Drawing the count first gives every subset size equal weight, so single channels are seen
    as often as full RGB; drawing subsets uniformly would make them rare. With ``single_prob``
    the count is one with that probability and otherwise equally any larger one: the single
    channels, where a shared model trails the experts most, get a chosen share of the batches
    instead of 1/V.
    """
    if single_prob is None or len(names) == 1:
        k = int(torch.randint(1, len(names) + 1, (1,), generator=generator))
    elif float(torch.rand(1, generator=generator)) < single_prob:
        k = 1
    else:
        k = int(torch.randint(2, len(names) + 1, (1,), generator=generator))
    keep = sorted(torch.randperm(len(names), generator=generator)[:k].tolist())
    return x[:, keep], tuple(names[i] for i in keep)


def dropout(x, names, p=0.5, generator=None):
    """Drop each channel with probability ``p``, keeping at least one."""
    keep = [i for i in range(len(names)) if float(torch.rand(1, generator=generator)) >= p]
    if not keep:
        keep = [int(torch.randint(len(names), (1,), generator=generator))]
    return x[:, keep], tuple(names[i] for i in keep)


AUGMENTATIONS = {
    "none": lambda x, names, generator=None: (x, tuple(names)),
    "shuffle": shuffle,
    "subset": sample_subset,
    "dropout": dropout,
}
