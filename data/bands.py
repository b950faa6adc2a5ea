"""Multi-band images: a data root whose ``bands.txt`` names the bands of every image.

``bands.txt`` holds one line per band, in the files' band order: ``<name> [<centre wavelength
in nm>]`` (e.g. ``B04 665``). Images are multi-band TIFF (``.tif``, ``.tiff``; read with
tifffile) or ``.npy`` arrays, height x width x band or band x height x width, of any one
integer or float dtype. Each band is standardised by its mean and standard deviation over
the training split; the run keeps them (checkpoint field ``bands``), so evaluating, predicting
and exporting normalise as training did. A root without ``bands.txt`` is RGB photos, as before.
"""
import os

import numpy as np
import tifffile
import torch

from utils.errors import UserError

SUFFIXES = (".tif", ".tiff", ".npy")
FORBIDDEN = set("+, \t")
STATS_IMAGES = 2000  # images read for the per-band statistics, evenly spaced over the split


def read_bands(root):
    """-> (names, wavelengths or None) from ``<root>/bands.txt``, or None when there is none."""
    path = os.path.join(root, "bands.txt")
    if not os.path.lexists(path):
        return None
    try:  # a folder or a link to nothing in its place is a mistake, not a photo root
        with open(path, encoding="utf-8-sig", newline=None) as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else 'not text'}") from None
    names, waves, where = [], [], {}
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        name = parts[0]
        if len(parts) > 2 or FORBIDDEN & set(name):
            raise UserError(f"{path}:{lineno}: malformed line {line.strip()!r} (expected '<band name> "
                            "[<wavelength in nm>]', a name without '+' or ',')")
        if name in where:
            raise UserError(f"{path}:{lineno}: band {name!r} is named twice (first at line {where[name]})")
        where[name] = lineno
        names.append(name)
        waves.append(_wavelength(parts[1], path, lineno) if len(parts) == 2 else None)
    if not names:
        raise UserError(f"{path}: no bands in it (one line '<band name> [<wavelength in nm>]' per band)")
    if any(w is None for w in waves):
        if any(w is not None for w in waves):
            missing = names[waves.index(None)]
            raise UserError(f"{path}: band {missing!r} has no wavelength while others have: give every band one, "
                            "or none")
        return tuple(names), None
    return tuple(names), tuple(waves)


def _wavelength(text, path, lineno):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 1e6:  # also refuses nan and inf
        raise UserError(f"{path}:{lineno}: wavelength {text!r} is not a number of nanometres")
    return value


def read_array(path, bands):
    """One image as a float32 ``[bands, H, W]`` tensor, and its dtype's name; one line naming the
    file for anything else (another band count, a format or dtype it cannot be, NaN or inf)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise UserError(f"cannot read image {path}: a multi-band root (bands.txt) takes "
                        f"{', '.join(SUFFIXES)} files, not {suffix or 'a file without a suffix'}")
    try:
        array = np.load(path, allow_pickle=False) if suffix == ".npy" else tifffile.imread(path)
    except (OSError, ValueError, EOFError, tifffile.TiffFileError) as exc:
        kind = "a NumPy array" if suffix == ".npy" else "a TIFF image"
        raise UserError(f"cannot read image {path}: not {kind} ({str(exc).splitlines()[0][:120]})") from None
    if array.dtype.kind not in "uif":
        raise UserError(f"cannot read image {path}: pixels of dtype {array.dtype}, not integers or floats")
    if array.ndim == 2 and bands == 1:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] == bands and array.shape[0] != bands:
        array = array.transpose(2, 0, 1)
    elif array.ndim != 3 or array.shape[0] != bands:
        raise UserError(f"cannot read image {path}: shape {array.shape} holds no {bands} bands "
                        "(bands.txt names that many; height x width x band or band x height x width)")
    out = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(out).all():
        raise UserError(f"cannot read image {path}: it holds NaN or inf pixels")
    return out, array.dtype.name


def band_stats(paths, bands):
    """Per-band mean and standard deviation over ``paths`` (one dtype for all of them)."""
    total = torch.zeros(bands, dtype=torch.float64)
    squares, count, dtype, first = torch.zeros_like(total), 0, None, None
    for path in paths:
        x, kind = read_array(path, bands)
        if dtype is None:
            dtype, first = kind, path
        elif kind != dtype:
            raise UserError(f"cannot read image {path}: its pixels are {kind}, those of {first} {dtype}; "
                            "one dtype per data root (convert the files)")
        x = x.double().flatten(1)
        total, squares, count = total + x.sum(1), squares + (x ** 2).sum(1), count + x.shape[1]
    mean = total / count
    std = (squares / count - mean ** 2).clamp(min=0).sqrt()
    # A constant band would divide by zero: it carries nothing, so it is only centred.
    std = torch.where(std > 1e-6 * mean.abs().clamp(min=1), std, torch.ones_like(std))
    return {"mean": mean.tolist(), "std": std.tolist(), "dtype": dtype}
