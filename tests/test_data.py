import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA, make_list_root
from data import build_dataset, describe_root, parse_combo
from data.channels import dropout, sample_subset, select, shuffle
from data.datasets import read_image, read_list, to_rgb
from utils.errors import UserError


def test_crlf_and_lf_lists_read_the_same(tmp_path):
    lf = make_list_root(tmp_path / "lf")
    crlf = make_list_root(tmp_path / "crlf", crlf=True)
    assert b"\r\n" in (crlf / "train.txt").read_bytes()
    a, b = read_list(str(lf / "train.txt")), read_list(str(crlf / "train.txt"))
    assert a == b and a[0][0].endswith(".JPEG") and a[0][1] == 0


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "mini-imagenet-lists")), reason="no shared lists")
def test_real_mini_imagenet_lists_parse():
    root = os.path.join(SHARED_DATA, "mini-imagenet-lists")
    spec = describe_root(root)
    assert len(spec.classes) == 50
    assert len(read_list(os.path.join(root, "train.txt"))) == 63325
    assert len(read_list(os.path.join(root, "val.txt"), 50)) == 450
    # The list files come without images: the error names the first missing one and its line.
    with pytest.raises(UserError, match=r"missing image .*\.JPEG \(listed at .*val\.txt:1\)"):
        build_dataset(spec, "val", 32)


def test_dataset_items(list_root):
    spec = describe_root(str(list_root))
    assert spec.classes == ["n00000000", "n00000001", "n00000002"]
    ds = build_dataset(spec, "train", 16, train=True)
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == 0 and len(ds) == 12


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA"])
def test_every_image_mode_becomes_rgb(mode):
    img = Image.new("RGB", (5, 5), (10, 200, 30)).convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and np.asarray(out).shape == (5, 5, 3)


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("content, message", [
    ("images/a/x.JPEG\n", r"train\.txt:1: malformed line"),
    ("images/a/x.JPEG 0\nimages/a/y.JPEG zero\n", r"train\.txt:2: malformed line"),
    ("", r"list file is empty"),
])
def test_malformed_lists_name_file_and_line(tmp_path, content, message):
    with pytest.raises(UserError, match=message):
        read_list(_write(tmp_path / "train.txt", content))


def test_label_out_of_range(list_root):
    with open(list_root / "val.txt", "a") as f:
        f.write("images/n00000000/n00000000_0.JPEG 7\n")
    with pytest.raises(UserError, match=r"val\.txt:4: label 7 out of range \[0, 3\)"):
        build_dataset(describe_root(str(list_root)), "val", 16)


def test_missing_root_and_list(tmp_path, list_root):
    with pytest.raises(UserError, match="data root not found"):
        describe_root(str(tmp_path / "nowhere"))
    os.remove(list_root / "test.txt")
    with pytest.raises(UserError, match=r"list file not found: .*test\.txt"):
        build_dataset(describe_root(str(list_root)), "test", 16)


@pytest.mark.parametrize("payload", [b"", b"not a jpeg at all"])
def test_unreadable_image_is_named(list_root, payload):
    spec = describe_root(str(list_root))
    ds = build_dataset(spec, "train", 16)
    path, _ = ds.samples[0]
    with open(path, "wb") as f:
        f.write(payload)
    with pytest.raises(UserError, match=f"cannot read image {path}"):
        ds[0]


def test_synthetic_is_deterministic_and_balanced():
    spec = describe_root("synthetic")
    a = build_dataset(spec, "train", 32)
    b = build_dataset(spec, "train", 32)
    assert spec.synthetic and len(spec.classes) == 6
    assert torch.equal(a[3][0], b[3][0]) and a.labels == b.labels
    assert min(np.bincount(a.labels)) > 100


@pytest.mark.parametrize("combo, message", [("RX", "unknown channel 'X'"), ("RR", "channel 'R' repeated"),
                                            ("", "empty channel combination")])
def test_bad_combinations(combo, message):
    with pytest.raises(UserError, match=message):
        parse_combo(combo)


def test_channel_transforms():
    x = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    xs, names = select(x, "BR")
    assert names == ("B", "R") and xs[0, :, 0, 0].tolist() == [2.0, 0.0]
    g = torch.Generator().manual_seed(0)
    xp, names = shuffle(x, ("R", "G", "B"), g)
    assert sorted(names) == ["B", "G", "R"]
    assert xp[0, :, 0, 0].tolist() == ["RGB".index(n) for n in names]  # values follow their names
    sizes = [len(sample_subset(x, ("R", "G", "B"), g)[1]) for _ in range(600)]
    counts = np.bincount(sizes, minlength=4)[1:]
    assert all(150 < c < 250 for c in counts)  # hierarchical: each subset size about equally often
    sizes = [len(sample_subset(x, ("R", "G", "B"), g, single_prob=0.5)[1]) for _ in range(600)]
    counts = np.bincount(sizes, minlength=4)[1:]
    assert 250 < counts[0] < 350 and all(100 < c < 200 for c in counts[1:])  # half singles, the rest shared
    assert all(len(sample_subset(x, ("R", "G", "B"), g, single_prob=1.0)[1]) == 1 for _ in range(50))
    for _ in range(50):
        xd, names = dropout(x, ("R", "G", "B"), 0.9, g)
        assert 1 <= len(names) == xd.shape[1]
        assert xd[0, :, 0, 0].tolist() == ["RGB".index(n) for n in names]


def test_sixteen_bit_greyscale_keeps_its_values(tmp_path):
    path = tmp_path / "grey16.JPEG"  # a PNG named like the dataset's files
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(path, format="PNG")  # 128.5 of 255 in 16 bits
    pixels = np.asarray(read_image(str(path)))
    assert pixels.shape == (4, 4, 3) and (pixels == 128).all()  # was pure white


@pytest.mark.parametrize("mode, dtype, kind", [("F", np.float32, "float"), ("I", np.int32, "integer")])
def test_pixels_without_a_known_range_are_refused_by_name(tmp_path, mode, dtype, kind):
    path = tmp_path / f"{mode}.tiff"
    Image.fromarray(np.ones((4, 4), dtype), mode=mode).save(path)
    with pytest.raises(UserError, match=f"{path}: pixel mode {mode} \\(32-bit {kind}\\)"):
        read_image(str(path))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[:, :2] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=100)
    img = np.asarray(read_image(str(path)))
    assert img.shape[:2] == (4, 2) and img[0].mean() > 200 and img[-1].mean() < 50


def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # PIL refuses above twice this
    with pytest.raises(UserError, match=f"cannot read image {path}: .*decompression bomb"):
        read_image(str(path))
