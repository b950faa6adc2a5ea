"""Channel combinations: naming, selecting and sampling input channels of a batch.

Channels have names: the letters R, G, B of photos, or a multi-band root's own (``bands.txt``:
``B04``, ``depth``). A combination names channels in order: joined by ``+`` (``B04+B03+B02``);
one-letter names may run together (``RG`` is ``R+G``, ``BGR`` a permutation). Images are
loaded with every band of the data, in its order (the *vocabulary*); these functions pick and
reorder channels on whole batches and return the names of those they kept, so that a model can
tell which is which.
"""
import torch

from utils.errors import UserError

DEFAULT_VOCAB = "RGB"
RGB = tuple(DEFAULT_VOCAB)
# Nominal centre wavelengths (nm) of photos' R, G, B: those of Sentinel-2's B04, B03 and B02,
# so that a model trained on photos meets those bands as its own channels.
RGB_WAVELENGTHS = (665.0, 560.0, 490.0)
DEFAULT_COMBOS = ("RGB", "RG", "RB", "GB", "R", "G", "B")


def vocab_names(vocab):
    """A model's vocabulary as a tuple of names: ``"RGB"`` (letters), ``"B04,B03"`` or a list."""
    if isinstance(vocab, str):
        return tuple(n.strip() for n in vocab.replace("+", ",").split(",")) if set(vocab) & set("+,") else tuple(vocab)
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(v, str) for v in vocab):
        raise TypeError(f"vocab must be channel letters (RGB), names (B04,B03) or a list of names, got {vocab!r}")
    return tuple(vocab)


def combo_name(names):
    """The written form of a combination: ``RG`` for one-letter names, ``B04+B03`` otherwise."""
    return ("" if all(len(n) == 1 for n in names) else "+").join(names)


ALL = "all"


def _names(combo, vocab):
    vocab = tuple(vocab)  # a vocabulary may be given as the string "RGB": names, not substrings
    if combo == ALL or combo.startswith(ALL + "-"):  # every channel, or every one but those after '-'
        left = [n.strip() for n in combo[len(ALL) + 1:].split("-")] if combo != ALL else []
        unknown = [n for n in left if n not in vocab]
        if unknown:
            raise UserError(f"unknown channel {unknown[0]!r} in combination {combo!r}")
        return [n for n in vocab if n not in left]
    if "+" in combo or "," in combo:
        return [n.strip() for n in combo.replace(",", "+").split("+")]
    if combo not in vocab and (all(c in vocab for c in combo) or all(len(n) == 1 for n in vocab)):
        return list(combo)  # one-letter names run together
    return [combo]


def parse_combo(combo, vocab=DEFAULT_VOCAB):
    """Validate a combination (``RG``, ``B04+B03``; a single one may use ``,``; ``all`` or
    ``all-B10``, every channel but B10) -> tuple of names."""
    example = combo_name(list(vocab)[:2])
    if not combo or not combo.strip():
        raise UserError(f"empty channel combination (name channels of {combo_name(vocab)!r}, e.g. {example!r})")
    names = _names(combo.strip(), vocab)
    unknown = [c for c in names if c not in vocab]
    if unknown:
        shown = ", ".join(list(vocab)[:16]) + (", ..." if len(vocab) > 16 else "")
        raise UserError(f"unknown channel {unknown[0]!r} in combination {combo!r}; channels are {shown}")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise UserError(f"channel {repeated[0]!r} repeated in combination {combo!r}")
    return tuple(names)


def parse_combo_list(text, vocab=DEFAULT_VOCAB):
    """``"RGB,RG,B"`` -> ``["RGB", "RG", "B"]`` (``"B04+B03,B08,all"`` with named bands), each validated."""
    combos, seen = [], set()
    for c in text.split(","):
        names = parse_combo(c, vocab)
        if names in seen:  # it would be evaluated twice and weigh twice in a mean
            raise UserError(f"combination {c.strip()!r} is listed twice in {text!r}")
        seen.add(names)
        combos.append(c.strip())
    return combos


def default_combos(bands, wavelengths=None):
    """What a model is judged on by default. Photos: every combination of R, G, B. Other bands:
    all of them, RGB where the data has it (by name, else by wavelength), each band alone and
    each left out (2V + 2 sets, not 2^V - 1)."""
    bands = tuple(bands)
    if bands == RGB:
        return list(DEFAULT_COMBOS)
    rgb = rgb_of(bands, wavelengths)
    combos = [ALL] + ([combo_name(rgb)] if rgb and len(bands) > 3 else []) + list(bands)
    left_out = [f"{ALL}-{b}" for b in bands if len(bands) > 2 and set(bands) - {b} != set(rgb or ())]
    return combos + left_out


def rgb_of(bands, wavelengths=None, tolerance=10.0):
    """The bands that stand for R, G, B (in that order), or None."""
    if set(RGB) <= set(bands):
        return RGB
    if wavelengths is None:
        return None
    picked = []
    for target in RGB_WAVELENGTHS:
        near = min(range(len(bands)), key=lambda i: abs(wavelengths[i] - target))
        if abs(wavelengths[near] - target) > tolerance:
            return None
        picked.append(bands[near])
    return tuple(picked)


def select(x, combo, vocab=DEFAULT_VOCAB):
    """Keep the channels of ``combo`` (in its order) from a batch laid out in vocabulary order."""
    names = parse_combo(combo, vocab)
    return x[:, [list(vocab).index(c) for c in names]], names


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
