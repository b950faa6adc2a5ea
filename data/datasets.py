"""Datasets: mini-ImageNet list files, and a small synthetic set for tests and the demo.

List format (the course's): ``<root>/{train,val,test}.txt``, one ``images/<wnid>/<file>.JPEG <label>``
per line, paths relative to ``<root>``. Line endings may be LF or CRLF (the real files use CRLF).
An optional ``<root>/classes.txt`` (``<wnid> <label> <name...>``) gives class names.
"""
import functools
import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torchvision import transforms as transforms_v1
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import pil_to_tensor

from utils.errors import UserError

from .bands import STATS_IMAGES, band_stats, read_array, read_bands
from .channels import RGB, RGB_WAVELENGTHS, combo_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
SYNTHETIC = "synthetic"


def _geometry(transforms, img_size, train):
    if train:
        return [transforms.RandomResizedCrop(img_size, scale=(0.35, 1.0), antialias=True),
                transforms.RandomHorizontalFlip()]
    return [transforms.Resize(eval_resize(img_size), antialias=True), transforms.CenterCrop(img_size)]


def eval_resize(img_size):
    """The shorter side an evaluated image is resized to before its centre ``img_size`` crop."""
    return round(img_size / 0.875)


def build_transform(img_size, train):
    """Crop, resize and flip on ``uint8`` ``[3, H, W]`` tensors; the result stays ``uint8``, a
    quarter of float32's bytes on the way to the device, where ``normalize`` finishes the job."""
    return T.Compose(_geometry(T, img_size, train))


def reference_transform(img_size, train):
    """The earlier pipeline, PIL image to normalised float32 on the CPU (benchmarks, tests)."""
    return transforms_v1.Compose(_geometry(transforms_v1, img_size, train) + [
        transforms_v1.ToTensor(), transforms_v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def normalize(x, stats=None):
    """``uint8`` images (on any device) to float, scaled and normalised as ImageNet models expect;
    ``x[:, i]`` is channel ``i`` of RGB. With ``stats`` (a multi-band root's, ``data/bands.py``)
    float images in their own units, each band standardised."""
    if stats is not None:
        mean, std = (torch.tensor(stats[k], device=x.device).view(1, -1, 1, 1) for k in ("mean", "std"))
        return (x.float() - mean) / std
    if x.dtype != torch.uint8:  # normalising twice would pass silently
        raise TypeError(f"normalize expects uint8 images, got {x.dtype}")
    mean, std = _scaled_stats(x.device)
    return (x.float() - mean) / std


@functools.lru_cache
def _scaled_stats(device):
    """ImageNet mean and std in uint8 units, made once per device (normalize runs every batch)."""
    return tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) * 255 for v in (IMAGENET_MEAN, IMAGENET_STD))


def load_image(path, img_size, bands=None):
    """One file as the evaluation pipeline sees it: ``[1, 3, S, S]`` float, normalised; with
    ``bands`` (a checkpoint's record of a multi-band root) ``[1, bands, S, S]``."""
    if bands is None:
        return normalize(build_transform(img_size, train=False)(decode_image(path)).unsqueeze(0))
    x = read_band_image(path, bands)
    return normalize(build_transform(img_size, train=False)(x).unsqueeze(0), bands)


def read_band_image(path, bands):
    """A multi-band file as ``read_array`` reads it, refused unless its dtype is the training images'."""
    x, dtype = read_array(path, len(bands["mean"]))
    if dtype != bands["dtype"]:
        raise UserError(f"cannot read image {path}: its pixels are {dtype}, the training images' "
                        f"{bands['dtype']}; one dtype per data root (convert the files)")
    return x


def to_rgb(img, path="image"):
    """Greyscale, palette, RGBA, CMYK and 16-bit greyscale all become 8-bit RGB; 32-bit integer
    and float pixels, whose range the file does not state, are refused by name."""
    if img.mode.startswith("I;16"):  # PIL's own convert("RGB") clips these to white
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
    elif img.mode in ("I", "F"):
        raise UserError(f"cannot read image {path}: pixel mode {img.mode} (32-bit "
                        f"{'integer' if img.mode == 'I' else 'float'}) has no known range; save it with 8 "
                        "or 16 bits per channel")
    if img.mode == "P":
        img = img.convert("RGBA")  # palette transparency must be resolved before dropping alpha
    return img if img.mode == "RGB" else img.convert("RGB")


# What PIL raises for a file it cannot read (DecompressionBombError is none of the others).
UNREADABLE = (Image.DecompressionBombError, OSError, SyntaxError, ValueError)


def read_image(path):
    """An RGB PIL image, upright as its EXIF orientation says, or a one-line error naming the file."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: the file closes when the block ends
            return to_rgb(ImageOps.exif_transpose(img), path)
    except UNREADABLE as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def _header(path, orientation=False):
    """Format, pixel mode and (if asked: parsing EXIF costs every image) EXIF orientation, from
    the header only; a decompression bomb fails here, with one line, before anything is decoded."""
    try:
        with Image.open(path) as img:
            return img.format, img.mode, img.getexif().get(EXIF_ORIENTATION, 1) if orientation else 1
    except UNREADABLE as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


EXIF_ORIENTATION = 0x0112


def decode_image(path):
    """A ``uint8`` ``[3, H, W]`` RGB tensor. JPEGs (nearly every file of mini-ImageNet) are decoded
    by ``torchvision.io.decode_jpeg`` (libjpeg-turbo, EXIF orientation applied), about twice as
    fast as PIL; other files, and JPEGs it cannot decode, go through ``read_image``."""
    if _header(path)[0] == "JPEG":
        try:
            return decode_jpeg(read_file(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError:
            pass  # e.g. a CMYK or arithmetic-coded JPEG: PIL knows more of them
    return pil_to_tensor(read_image(path))


def encoded_image(path):
    """What ``--decode device`` sends to the device: an upright RGB JPEG's bytes (1-D ``uint8``),
    which nvjpeg decodes; any other file (greyscale, CMYK, rotated by EXIF, not a JPEG) decoded
    here as ``decode_image`` does, because nvjpeg does not convert or rotate them."""
    fmt, mode, orientation = _header(path, orientation=True)
    if fmt == "JPEG" and mode == "RGB" and orientation == 1:
        return read_file(path)
    return decode_image(path)


def read_list(path, num_classes=None):
    """Parse a list file into ``[(relative_path, label, line_number)]`` with file:line errors."""
    if not os.path.isfile(path):
        raise UserError(f"list file not found: {path}")
    entries = []
    # utf-8-sig: a byte-order mark would otherwise become part of the first image path;
    # newline=None folds CRLF into LF.
    with open(path, encoding="utf-8-sig", newline=None) as f:
        lines = _decoded_lines(f, path)
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not LABEL.fullmatch(parts[1]):
            raise UserError(f"{path}:{lineno}: malformed line {line!r} "
                            "(expected '<image path> <integer label>')")
        label = int(parts[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise UserError(f"{path}:{lineno}: label {label} out of range "
                            f"[0, {num_classes if num_classes is not None else '?'})"
                            f"{CLASSES_NOTE if num_classes is not None else ''}")
        rel = parts[0]
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
            raise UserError(f"{path}:{lineno}: image path {rel!r} leaves the data root "
                            "(paths must be relative to the folder holding the list)")
        entries.append((rel, label, lineno))
    if not entries:
        raise UserError(f"list file is empty: {path}")
    return entries


LABEL = re.compile(r"-?[0-9]+")
CLASSES_NOTE = " (the classes are those of classes.txt, else of train.txt: a class with no training image is unknown)"


def _decoded_lines(f, path):
    try:
        return f.read().split("\n")
    except UnicodeDecodeError as exc:
        lineno = exc.object[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{lineno}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None


def read_classes(root, train_entries):
    """Class names from classes.txt when present, else the wnid folder of each label's images."""
    path = os.path.join(root, "classes.txt")
    if os.path.isfile(path):
        names, where = {}, {}
        with open(path, encoding="utf-8-sig", newline=None) as f:
            lines = _decoded_lines(f, path)
        for lineno, line in enumerate(lines, 1):
            parts = line.split(maxsplit=2)
            if not parts:
                continue
            if len(parts) < 2 or not parts[1].isdigit():
                raise UserError(f"{path}:{lineno}: malformed line {line.strip()!r} "
                                "(expected '<wnid> <label> [name]')")
            names[int(parts[1])] = parts[2].strip() if len(parts) > 2 else parts[0]
            where[int(parts[1])] = f"{path}:{lineno}"
        if not names:
            raise UserError(f"{path}: no classes in it (lines '<wnid> <label> [name]')")
        _check_numbering(names, where)
        return [names.get(i, str(i)) for i in range(max(names) + 1)]
    wnids, where = {}, {}
    for rel, label, lineno in train_entries:
        wnids.setdefault(label, os.path.basename(os.path.dirname(rel)) or str(label))
        where.setdefault(label, f"{os.path.join(root, 'train.txt')}:{lineno}")
    _check_numbering(wnids, where)
    return [wnids.get(i, str(i)) for i in range(max(wnids) + 1)]


def _check_numbering(labels, where):
    """Labels number the classes from 0; a few may go unused, but a label far beyond the number of
    classes named would size the classifier (and the class list) by it."""
    top = max(labels)
    if top >= 2 * len(labels) + 10:
        raise UserError(f"{where[top]}: label {top} with only {len(labels)} distinct labels: labels must number "
                        "the classes from 0 (at most about half of the numbers unused)")


def evenly_spaced(items, limit):
    """A deterministic slice of ``limit`` items spread over the whole list (keeps every class)."""
    if not limit or limit >= len(items):
        return items
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


class ListDataset(torch.utils.data.Dataset):
    """Images named by a mini-ImageNet list file, returned as ``(tensor[3,H,W], label)``; with
    ``bands`` (a multi-band root) float ``[bands, H, W]`` arrays (``data/bands.py``)."""

    def __init__(self, root, split, classes, transform, limit=None, bands=None):
        self.list_path = os.path.join(root, f"{split}.txt")
        entries = evenly_spaced(read_list(self.list_path, len(classes)), limit)
        self.samples = []
        for rel, label, lineno in entries:
            path = os.path.join(root, rel)
            if not os.path.isfile(path):
                raise UserError(f"missing image {path} (listed at {self.list_path}:{lineno})")
            self.samples.append((path, label))
        self.classes = classes
        self.transform = transform
        self.bands = bands

    def __len__(self):
        return len(self.samples)

    def decode(self, path):
        return decode_image(path) if self.bands is None else read_band_image(path, self.bands)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(self.decode(path)), label

    def encoded(self, i):
        """``(image before decoding and transform, label, path)``: see ``encoded_image``; a
        multi-band image decoded here."""
        path, label = self.samples[i]
        return (encoded_image(path) if self.bands is None else self.decode(path)), label, path


SYNTHETIC_SHAPES = ("disc", "square", "ring")
SYNTHETIC_COLOURS = {"warm": (0.9, 0.55, 0.1), "cool": (0.1, 0.55, 0.9)}
SYNTHETIC_SIZES = {"train": 1200, "val": 300, "test": 300}


class SyntheticShapes(torch.utils.data.Dataset):
    """Coloured shapes on noisy backgrounds: 6 classes, shape x colour, so both cues matter.

    Generated deterministically from (seed, split) at construction; no files are written.
    """

    def __init__(self, split, transform, size=64, seed=0, limit=None):
        n = min(limit or SYNTHETIC_SIZES[split], SYNTHETIC_SIZES[split])
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        self.classes = [f"{c} {s}" for c in SYNTHETIC_COLOURS for s in SYNTHETIC_SHAPES]
        self.labels = rng.integers(0, len(self.classes), n).tolist()
        self.images = [pil_to_tensor(self._draw(label, size, rng)) for label in self.labels]
        self.transform = transform

    def _draw(self, label, size, rng):
        colour = np.array(list(SYNTHETIC_COLOURS.values())[label // len(SYNTHETIC_SHAPES)])
        shape = SYNTHETIC_SHAPES[label % len(SYNTHETIC_SHAPES)]
        background = rng.uniform(0.2, 0.6) + rng.normal(0, 0.08, (size, size, 1))
        img = Image.fromarray((np.clip(background.repeat(3, 2), 0, 1) * 255).astype(np.uint8))
        fill = tuple(int(v) for v in np.clip(colour + rng.normal(0, 0.08, 3), 0, 1) * 255)
        r = rng.uniform(0.18, 0.32) * size
        cx, cy = rng.uniform(r, size - r, 2)
        box = (cx - r, cy - r, cx + r, cy + r)
        draw = ImageDraw.Draw(img)
        if shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "disc":
            draw.ellipse(box, fill=fill)
        else:
            draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
        return img

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]

    def encoded(self, i):
        return self.images[i], self.labels[i], None


@dataclass
class DataSpec:
    """What a run trained on: enough to rebuild its evaluation data and label its outputs.
    ``bands``: the channels' names in file order; ``wavelengths`` theirs in nm (or None);
    ``stats`` a multi-band root's per-band mean, std and dtype (None for photos)."""
    root: str
    classes: list
    synthetic: bool
    bands: tuple = RGB
    wavelengths: tuple = RGB_WAVELENGTHS
    stats: dict = None

    @property
    def name(self):
        return "synthetic shapes (built-in)" if self.synthetic else self.root

    def record(self):
        """The checkpoint's ``bands`` field (None for photos, whose normalisation is fixed)."""
        if self.stats is None:
            return None
        return {"names": list(self.bands), "wavelengths": None if self.wavelengths is None else list(self.wavelengths),
                **self.stats}


def describe_root(root, bands=None):
    """Check a data root and read its classes; ``synthetic`` selects the built-in set. A
    multi-band root's statistics are ``bands`` (a checkpoint's record of them) when given, else
    computed on its training split."""
    if root == SYNTHETIC:
        classes = [f"{c} {s}" for c in SYNTHETIC_COLOURS for s in SYNTHETIC_SHAPES]
        return DataSpec(root, classes, True)
    if not os.path.isdir(root):
        raise UserError(f"data root not found: {root} (set --data-root or DATA_ROOT, "
                        f"or use '{SYNTHETIC}' for the built-in data)")
    train = read_list(os.path.join(root, "train.txt"))
    classes = read_classes(root, train)
    named = read_bands(root)
    if named is None:
        if bands is not None:
            raise UserError(f"{root} holds RGB photos (no bands.txt); the checkpoint was trained on bands "
                            f"{combo_name(bands['names'])}")
        return DataSpec(root, classes, False)
    names, waves = named
    if bands is not None:
        if list(names) != list(bands["names"]):
            raise UserError(f"{os.path.join(root, 'bands.txt')}: bands {combo_name(names)}, the checkpoint's "
                            f"{combo_name(bands['names'])}: evaluate on data with the bands it trained on")
        stats = {k: bands[k] for k in ("mean", "std", "dtype")}
    else:
        paths = [os.path.join(root, rel) for rel, _, _ in evenly_spaced(train, STATS_IMAGES)]
        missing = next((p for p in paths if not os.path.isfile(p)), None)
        if missing:
            raise UserError(f"missing image {missing} (listed in {os.path.join(root, 'train.txt')})")
        stats = band_stats(paths, len(names))
    return DataSpec(root, classes, False, names, waves, stats)


def build_dataset(spec, split, img_size, train=False, limit=None, seed=0):
    transform = build_transform(img_size, train)
    if spec.synthetic:
        return SyntheticShapes(split, transform, seed=seed, limit=limit)
    return ListDataset(spec.root, split, spec.classes, transform, limit=limit, bands=spec.stats)


def list_fingerprint(*datasets):
    """Each split's list file in short (its images and a digest of its bytes), so that a resume
    can tell the lists it was started with from edited ones."""
    prints = {}
    for d in datasets:
        path = getattr(d, "list_path", None)  # the built-in synthetic data has none
        if path:
            with open(path, "rb") as f:
                prints[os.path.basename(path)] = f"{len(d)} images, sha256 {hashlib.sha256(f.read()).hexdigest()[:12]}"
    return prints
