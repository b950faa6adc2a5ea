"""The uint8 input pipeline: same pixels as the earlier PIL/float pipeline, channels picked after
normalising on the device, decoding on the device equal to decoding in the workers, a prepared
copy that loads unchanged, --compile on the CPU."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import bench
import models
import test_dw
import train_dw
from conftest import make_list_root
from data import build_dataset, describe_root, loaders, prepare
from data.channels import select
from data.datasets import build_transform, decode_image, normalize, read_image, reference_transform
from utils.checkpoint import load_checkpoint
from utils.distributed import Context


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


def mixed_root(tmp_path):
    """A list root whose files take every route of ``encoded_image``: upright RGB JPEGs (sent
    encoded), and a greyscale JPEG, a CMYK JPEG, an EXIF-rotated JPEG and a PNG (decoded in the
    worker)."""
    root = make_list_root(tmp_path / "data", classes=3, per_class=6, size=40)
    rng = np.random.default_rng(1)
    odd = root / "images" / "n00000000"
    arr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(arr).convert("L").save(odd / "grey.JPEG")
    Image.fromarray(arr).convert("CMYK").save(odd / "cmyk.JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(odd / "rotated.JPEG", exif=exif)
    Image.fromarray(arr).save(odd / "png.JPEG", format="PNG")
    with open(root / "train.txt", "a") as f:
        f.writelines(f"images/n00000000/{n}.JPEG 0\n" for n in ("grey", "cmyk", "rotated", "png"))
    with open(root / "val.txt", "a") as f:
        f.writelines(f"images/n00000000/{n}.JPEG 0\n" for n in ("grey", "cmyk", "rotated", "png"))
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_decoding_on_the_device_equals_decoding_in_the_workers(tmp_path, workers):
    spec = describe_root(str(mixed_root(tmp_path)))
    ctx = Context(device=torch.device("cpu"))
    train = build_dataset(spec, "train", 24, train=True)
    kinds = {loaders.EncodedSamples(train)[i][0].ndim for i in range(len(train))}
    assert kinds == {1, 3}  # both routes taken
    batches = {}
    for decode in loaders.DECODE:
        loader = loaders.train_loader(train, 4, workers, seed=5, ctx=ctx, decode=decode)
        loader.sampler.set_epoch(2, skip_batches=1)  # a resume inside an epoch: same seeds
        batches[decode] = [(x.to(ctx.device), y) for x, y in loader]
    assert len(batches["device"]) == len(train) // 4 - 1
    for (a, ya), (b, yb) in zip(batches["workers"], batches["device"]):
        assert b.dtype == torch.uint8 and torch.equal(a, b) and torch.equal(ya, yb)
    val = build_dataset(spec, "val", 24)
    evals = [[x.to(ctx.device) for x, _ in loaders.eval_loader(val, 5, workers, ctx, decode)]
             for decode in loaders.DECODE]
    assert all(torch.equal(a, b) for a, b in zip(*evals)) and len(evals[1]) == 2


def test_a_batch_the_device_decoder_refuses_is_decoded_on_the_cpu(tmp_path, monkeypatch):
    spec = describe_root(str(make_list_root(tmp_path / "data", size=40)))
    val = build_dataset(spec, "val", 24)
    ctx = Context(device=torch.device("cpu"))
    expected = next(iter(loaders.eval_loader(val, 3, 0, ctx)))[0]
    batch = next(iter(loaders.eval_loader(val, 3, 0, ctx, "device")))[0]

    def refuse(*args, **kwargs):
        raise RuntimeError("nvjpeg: unsupported")
    monkeypatch.setattr(loaders, "decode_jpeg", refuse)
    assert torch.equal(batch.to(ctx.device), expected)


def test_training_and_evaluation_decode_on_the_device(tmp_path):
    root = mixed_root(tmp_path)
    common = ["--data-root", str(root), "--img-size", "16", "--batch-size", "4", "--workers", "1", "--epochs", "1",
              "--seed", "3", "--deterministic"]
    for decode in loaders.DECODE:
        assert train_dw.main(["--model", "dwg", "--backbone", "small", *common, "--decode", decode,
                              "--out", str(tmp_path / decode)]) == 0
    a, b = (load_checkpoint(str(tmp_path / d / "last.pt"))["state_dict"] for d in loaders.DECODE)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same pixels, so the same training
    assert test_dw.main(["--checkpoint", str(tmp_path / "device"), "--data-root", str(root), "--decode", "device",
                         "--split", "val", "--combos", "RGB,R", "--workers", "0", "--out", str(tmp_path / "eval")]) == 0


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
    (tmp_path / "link").symlink_to(src)  # nor through a link
    with pytest.raises(SystemExit):
        prepare.main([str(src), str(tmp_path / "link" / "copy"), "--max-side", "20"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        prepare.main([str(src), str(tmp_path / "file"), "--max-side", "20"])
    assert not (src / "copy").exists()


def test_a_prepared_copy_that_fails_or_is_interrupted_leaves_nothing(tmp_path, monkeypatch, capsys):
    src = make_list_root(tmp_path / "src", classes=3, per_class=4, size=48)
    path = build_dataset(describe_root(str(src)), "train", 16).samples[2][0]
    good = open(path, "rb").read()
    open(path, "wb").write(b"not a jpeg")
    with pytest.raises(SystemExit) as exc:
        prepare.main([str(src), str(tmp_path / "dst"), "--max-side", "20", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err[-1].startswith(f"error: cannot read image {path}")
    assert not (tmp_path / "dst").exists()  # a cut copy would pass for a whole one
    open(path, "wb").write(good)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare, "tqdm", interrupted)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        prepare.main([str(src), str(tmp_path / "empty"), "--max-side", "20", "--workers", "1"])
    assert exc.value.code == 130 and "the unfinished copy" in capsys.readouterr().err
    assert os.listdir(tmp_path / "empty") == []  # the folder the user made stays, empty


def test_a_prepared_copy_keeps_the_exif_orientation(tmp_path):
    """A photo stored sideways with an EXIF orientation tag: the loader shows it upright, and so
    must the prepared copy (pixels turned, tag gone)."""
    src = make_list_root(tmp_path / "src", classes=3, per_class=4, size=48)
    path = build_dataset(describe_root(str(src)), "train", 16).samples[0][0]
    stored = np.zeros((40, 80, 3), np.uint8)  # wide as stored, the left half bright
    stored[:, :40] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: tall, the bright half on top
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)
    assert prepare.main([str(src), str(tmp_path / "dst"), "--max-side", "20", "--workers", "1"]) == 0
    prepared = os.path.join(tmp_path / "dst", os.path.relpath(path, src))
    with Image.open(prepared) as img:
        assert img.size == (20, 40) and img.getexif().get(0x0112, 1) == 1
        pixels = np.asarray(img.convert("L"), np.float32)
    assert pixels[:15].mean() > 200 and pixels[25:].mean() < 50


def test_compile_trains_on_the_cpu_and_keeps_plain_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert train_dw.main(["--model", "dwg", "--backbone", "small", "--data-root", "synthetic", "--limit", "32",
                          "--img-size", "16", "--batch-size", "16", "--workers", "0", "--epochs", "1",
                          "--compile", "--compile-backend", "aot_eager", "--out", str(out)]) == 0
    ckpt = load_checkpoint(str(out / "best.pt"))
    models.create_model("dwg", 6, backbone="small").load_state_dict(ckpt["state_dict"])  # no _orig_mod keys


def test_quick_loader_part(tmp_path):
    root = make_list_root(tmp_path / "data", classes=2, per_class=3, size=300)
    assert bench.main(["--quick", "--parts", "loader", "--data-root", str(root), "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "loader.json").read_text())
    assert [(r["pipeline"].split(":")[0], r["files"].split(" ")[0]) for r in rows] == [
        ("earlier", "full-size"), ("ours", "full-size"), ("ours, --decode device", "full-size"),
        ("earlier", "prepared"), ("ours", "prepared"), ("ours, --decode device", "prepared")]
    assert [r["bytes_to_device_per_image"] for r in rows[:2]] == [602112, 150528]
    sizes = [os.path.getsize(root / line.split()[0]) for line in (root / "train.txt").read_text().splitlines()]
    assert rows[2]["bytes_to_device_per_image"] == round(sum(sizes) / len(sizes))  # the files, as they are
    # every speed-up is against the first row, the earlier pipeline on the full-size files
    assert all(r["speedup"] == pytest.approx(r["images_per_s_per_core"] / rows[0]["images_per_s_per_core"])
               for r in rows)
