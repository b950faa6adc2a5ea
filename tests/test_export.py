"""Deployment for one channel combination (``for_channels``) and export.py (ONNX, torch.export)."""
import json

import numpy as np
import onnxruntime
import pytest
import torch

import export
import models
import train_dw
import train_rrdb
from conftest import make_list_root
from data import build_dataset, describe_root
from data.channels import select
from data.datasets import normalize
from models.loading import load_model
from models.norm import ComboBatchNorm2d


@pytest.mark.parametrize("name, options", [("dwg", {}), ("plain_zero", {}), ("plain_mean", {}), ("seed_dwg", {})])
def test_for_channels_equals_the_model_on_those_channels(name, options):
    torch.manual_seed(0)
    model = models.create_model(name, 5, backbone="small", **options)
    with torch.no_grad():  # every set's statistics different, every path in use
        for m in model.modules():
            if isinstance(m, (ComboBatchNorm2d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
        if name == "dwg":
            model.stem.fc2.weight.normal_(0, 0.3)
            model.combo_seen[:5] = 1  # GB stays unseen: it falls back to the full set's row
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    for combo in ("RGB", "BGR", "GB", "R", "BR"):
        idx = ["RGB".index(c) for c in combo]
        plain = model.for_channels(combo)
        assert not any(isinstance(m, ComboBatchNorm2d) for m in plain.modules())
        with torch.no_grad():
            torch.testing.assert_close(plain(x[:, idx]), model(x[:, idx], tuple(combo)), atol=1e-5, rtol=0)
    if name != "seed_dwg":  # the stem is an ordinary convolution over the given channels
        assert isinstance(model.for_channels("GB")[0], torch.nn.Conv2d)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_list_root(tmp_path_factory.mktemp("data") / "d", classes=3, per_class=8, size=32)
    out = tmp_path_factory.mktemp("run")
    common = ["--data-root", str(root), "--img-size", "24", "--batch-size", "6", "--workers", "0", "--epochs", "1"]
    assert train_dw.main(["--model", "dwg", "--backbone", "small", *common, "--out", str(out / "dwg")]) == 0
    assert train_rrdb.main(["--model", "shallow", *common, "--out", str(out / "shallow")]) == 0
    return root, out


def test_onnx_and_torch_export_match_pytorch_on_a_real_image(trained, tmp_path, capsys):
    root, out = trained
    spec = describe_root(str(root))
    image = build_dataset(spec, "test", 24).samples[0][0]
    assert export.main(["--checkpoint", str(out / "dwg" / "best.pt"), "--channels", "GB", "--image", image,
                        "--out", str(tmp_path)]) == 0
    assert "matches PyTorch within" in capsys.readouterr().out
    meta = json.loads((tmp_path / "dwg_GB.json").read_text())
    assert (meta["channels"], meta["img_size"], len(meta["classes"])) == ("GB", 24, 3)
    assert meta["mean"] == pytest.approx([0.456, 0.406])
    _, model = load_model(str(out / "dwg" / "best.pt"), spec.classes)
    x = normalize(torch.stack([build_dataset(spec, "test", 24)[i][0] for i in range(3)]))  # a batch of three
    xc, names = select(x, "GB")
    with torch.no_grad():
        expected = model.eval()(xc, names).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "dwg_GB.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": xc.numpy()})[0], expected, atol=1e-4, rtol=0)
    program = torch.export.load(str(tmp_path / "dwg_GB.pt2")).module()
    np.testing.assert_allclose(program(xc).detach().numpy(), expected, atol=1e-4, rtol=0)


def test_task2_exports_rgb_only(trained, tmp_path, capsys):
    _, out = trained
    assert export.main(["--checkpoint", str(out / "shallow"), "--formats", "torch", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "shallow_RGB.pt2").exists() and not (tmp_path / "shallow_RGB.onnx").exists()
    for args, message in [(["--channels", "RG"], "this is a Task 2 model, it takes RGB only"),
                          (["--formats", "tflite"], "argument --formats: tflite: choose from onnx, torch")]:
        with pytest.raises(SystemExit) as exc:
            export.main(["--checkpoint", str(out / "shallow"), "--out", str(tmp_path), *args])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_failed_export_leaves_the_earlier_one_whole(trained, tmp_path, capsys, monkeypatch):
    """NaN weights (or a check that fails) write nothing: the export already in --out, and the
    .json that describes it, stay as they were; predict.py refuses the same weights."""
    import predict
    from conftest import file_hashes
    from utils.checkpoint import save_atomic
    root, out = trained
    good = str(out / "dwg" / "best.pt")
    assert export.main(["--checkpoint", good, "--channels", "RG", "--out", str(tmp_path / "export")]) == 0
    before = file_hashes(tmp_path / "export")
    ckpt = torch.load(good, weights_only=False)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    save_atomic(ckpt, tmp_path / "nan.pt")
    image = build_dataset(describe_root(str(root)), "test", 24).samples[0][0]
    for main, args in [(export.main, ["--channels", "RG", "--out", str(tmp_path / "export")]),
                       (predict.main, ["--channels", "RG", image])]:
        with pytest.raises(SystemExit) as exc:
            main(["--checkpoint", str(tmp_path / "nan.pt"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "hold NaN or inf" in err[0] and key in err[0]
    # the ONNX file written and checked, then the torch.export one failing its check
    def wrong_program(net, example, path):
        open(path, "wb").write(b"not a program")
        return lambda x: torch.full((len(x), 3), 1e3)
    monkeypatch.setattr(export, "export_torch", wrong_program)
    with pytest.raises(SystemExit) as exc:
        export.main(["--checkpoint", good, "--channels", "RG", "--out", str(tmp_path / "export")])
    assert exc.value.code == 2 and "logits differ" in capsys.readouterr().err
    assert file_hashes(tmp_path / "export") == before
    assert not [p for p in (tmp_path / "export").iterdir() if p.name.startswith(".tmp-")]


def test_labels_that_name_other_classes_are_refused(trained, tmp_path, capsys):
    """The same images with their labels rotated: the class names stored in the checkpoint show it."""
    import shutil

    import test_dw
    root, out = trained
    rotated = tmp_path / "rotated"
    shutil.copytree(root, rotated)
    for split in ("train", "val", "test"):
        lines = (rotated / f"{split}.txt").read_text().splitlines()
        (rotated / f"{split}.txt").write_text("".join(f"{p} {(int(label) + 1) % 3}\n" for p, label in
                                                     (line.split() for line in lines)))
    with pytest.raises(SystemExit) as exc:
        test_dw.main(["--checkpoint", str(out / "dwg" / "best.pt"), "--data-root", str(rotated),
                      "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "the same classes under other labels" in err[0]
