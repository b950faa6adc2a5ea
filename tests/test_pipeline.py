"""The uint8 input pipeline: same pixels as the earlier PIL/float pipeline, channels picked after
normalising on the device, a prepared copy that loads unchanged, --compile on the CPU."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import bench
import models
import train_dw
from conftest import make_list_root
from data import build_dataset, describe_root, prepare
from data.channels import select
from data.datasets import build_transform, decode_image, normalize, read_image, reference_transform
from utils.checkpoint import load_checkpoint


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((25, 25, 1))).astype(np.uint8)  # 300 x 400
    path = tmp_path / "photo.JPEG"
    Image.fromarray(smooth).save(path, quality=95)
    return str(path)


def test_uint8_pipeline_gives_the_reference_image(photo):
    new = normalize(build_transform(64, train=False)(decode_image(photo)).unsqueeze(0))[0]
    old = reference_transform(64, train=False)(read_image(photo))
    assert new.dtype == old.dtype == torch.float32 and new.shape == old.shape == (3, 64, 64)
    # Two JPEG decoders (libjpeg-turbo, PIL) and two antialiased resizes: close, not identical.
    assert (new - old).abs().mean() < 0.03 and (new - old).abs().max() < 0.5


def test_channels_picked_on_the_device_equal_the_earlier_cpu_selection(photo):
    new = normalize(build_transform(32, train=False)(decode_image(photo)).unsqueeze(0).expand(2, -1, -1, -1))
    old = reference_transform(32, train=False)(read_image(photo)).unsqueeze(0).expand(2, -1, -1, -1)
    for combo in ("RG", "B", "GB", "BR"):
        picked, names = select(new, combo)
        expected, expected_names = select(old, combo)
        assert names == expected_names == tuple(combo) and picked.shape == expected.shape
        # each channel keeps its own mean and std: a wrong channel would differ by far more
        assert (picked - expected).abs().mean() < 0.03


def test_a_prepared_copy_loads_with_the_same_loader(tmp_path):
    src = make_list_root(tmp_path / "src", classes=3, per_class=4, size=48)
    assert prepare.main([str(src), str(tmp_path / "dst"), "--max-side", "20", "--workers", "1"]) == 0
    spec = describe_root(str(tmp_path / "dst"))
    ds = build_dataset(spec, "train", 16, train=True)
    assert len(ds) == 6 and ds[0][0].shape == (3, 16, 16) and ds[0][0].dtype == torch.uint8
    assert max(Image.open(p).size[0] for p, _ in ds.samples) == 20
    assert spec.classes == describe_root(str(src)).classes
    with pytest.raises(SystemExit):  # never beside (inside) the data
        prepare.main([str(src), str(src / "copy"), "--max-side", "20"])


def test_compile_trains_on_the_cpu_and_keeps_plain_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert train_dw.main(["--model", "dwg", "--backbone", "small", "--data-root", "synthetic", "--limit", "32",
                          "--img-size", "16", "--batch-size", "16", "--workers", "0", "--epochs", "1",
                          "--compile", "--compile-backend", "aot_eager", "--out", str(out)]) == 0
    ckpt = load_checkpoint(str(out / "best.pt"))
    models.create_model("dwg", 6, backbone="small").load_state_dict(ckpt["state_dict"])  # no _orig_mod keys


def test_quick_loader_part(tmp_path):
    root = make_list_root(tmp_path / "data", classes=2, per_class=3, size=300)
    bench.main(["--quick", "--parts", "loader", "--data-root", str(root), "--out", str(tmp_path / "b")])
    rows = json.loads((tmp_path / "b" / "loader.json").read_text())
    assert [(r["pipeline"].split(":")[0], r["files"].split(" ")[0]) for r in rows] == [
        ("earlier", "full-size"), ("ours", "full-size"), ("earlier", "prepared"), ("ours", "prepared")]
    assert [r["bytes_to_device_per_image"] for r in rows[:2]] == [602112, 150528]
    assert rows[0]["speedup"] == 1.0
