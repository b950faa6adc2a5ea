"""``--pretrained`` with one of our own checkpoints: the body as it is, the classifier dropped,
the stem given to each model the standard way; at step 0 every model computes the pretrained
model's features on what it sees."""
import pytest
import torch
import torch.nn as nn

import models
from conftest import run_script, trained_run
from utils.errors import UserError

KINDS = ["plain_zero", "plain_mean", "plain_dropout", "dwg"]


def _checkpoint(path, model_name, backbone="small", classes=5, seed=0):
    """A checkpoint of ``model_name`` as train_dw.py writes one, its BatchNorm statistics moved off
    their defaults (so that a body that lost them would show)."""
    torch.manual_seed(seed)
    model = models.create_model(model_name, classes, backbone=backbone)
    for m in model.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    if hasattr(model.stem, "fc2"):  # a trained dwg's hypernetwork is not at zero
        nn.init.normal_(model.stem.fc2.weight, std=0.1)
    torch.save({"model": model_name, "config": {"backbone": backbone}, "classes": [f"c{i}" for i in range(classes)],
                "state_dict": model.state_dict()}, path)
    return model.eval()


def _features(model, x, names):
    """The body's output before its classifier (the classifier is new in a fine-tuned model)."""
    model = model.eval()
    head = model.body.head
    saved, head[2] = head[2], nn.Identity()
    try:
        with torch.no_grad():
            return model(x, names)
    finally:
        head[2] = saved


@pytest.mark.parametrize("source", ["plain_zero", "dwg"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_model_starts_with_the_pretrained_features_on_rgb(tmp_path, kind, source):
    pretrained = _checkpoint(tmp_path / "pre.pt", source)
    model = models.create_model(kind, 3, backbone="small", pretrained=str(tmp_path / "pre.pt"))
    assert model.body.head[2].out_features == 3  # the classifier is this data's, not the checkpoint's
    x = torch.randn(4, 3, 24, 24)
    rgb = tuple("RGB")
    torch.testing.assert_close(_features(model, x, rgb), _features(pretrained, x, rgb), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["plain_zero", "plain_mean", "dwg"])
def test_a_single_channel_model_sees_its_channel_as_the_pretrained_one_sees_a_grey_image(tmp_path, kind):
    """An expert on G (zero-filled) takes the sum of the RGB kernel as its G slice; mean fill and
    dwg's base kernels compute that sum themselves."""
    pretrained = _checkpoint(tmp_path / "pre.pt", "plain_zero")
    model = models.create_model(kind, 3, backbone="small", pretrained=str(tmp_path / "pre.pt"))
    if hasattr(model.stem, "inherit_for"):
        model.stem.inherit_for(("G",))
    g = torch.randn(4, 1, 24, 24)
    torch.testing.assert_close(_features(model, g, ("G",)), _features(pretrained, g.expand(-1, 3, -1, -1),
                                                                      tuple("RGB")), atol=1e-5, rtol=1e-5)


def test_a_two_channel_model_keeps_the_slices_of_its_channels(tmp_path):
    pretrained = _checkpoint(tmp_path / "pre.pt", "plain_zero")
    model = models.create_model("plain_zero", 3, backbone="small", pretrained=str(tmp_path / "pre.pt"))
    model.stem.inherit_for(("R", "B"))
    torch.testing.assert_close(model.stem.conv.weight, pretrained.stem.conv.weight)


def test_a_resnet18_checkpoint_starts_a_resnet18_dwg(tmp_path):
    torch.manual_seed(0)
    source = models.create_model("plain_zero", 5, backbone="resnet18")
    torch.save({"model": "plain_zero", "config": {"backbone": "resnet18"}, "classes": list("abcde"),
                "state_dict": source.state_dict()}, tmp_path / "pre.pt")
    model = models.create_model("dwg", 3, backbone="resnet18", pretrained=str(tmp_path / "pre.pt"))
    torch.testing.assert_close(model.body.layer4[1].conv2.weight, source.body.layer4[1].conv2.weight)
    torch.testing.assert_close(model.stem.base.transpose(0, 1), source.stem.conv.weight)


def test_a_checkpoint_of_another_body_or_task_is_refused(tmp_path):
    _checkpoint(tmp_path / "small.pt", "plain_zero")
    with pytest.raises(UserError, match="'small' backbone; this model's is 'resnet18'"):
        models.create_model("dwg", 3, backbone="resnet18", pretrained=str(tmp_path / "small.pt"))
    shallow = models.create_model("shallow", 5)
    torch.save({"model": "shallow", "config": {}, "classes": list("abcde"), "state_dict": shallow.state_dict()},
               tmp_path / "shallow.pt")
    with pytest.raises(UserError, match="not of a Task 1 model"):
        models.create_model("dwg", 3, backbone="small", pretrained=str(tmp_path / "shallow.pt"))


def test_the_scripts_fine_tune_from_a_run_folder_and_refuse_a_bad_one(tmp_path_factory, tmp_path):
    tiny = ["--data-root", "synthetic", "--limit", "64", "--img-size", "16", "--batch-size", "16",
            "--workers", "0", "--epochs", "1", "--backbone", "small"]
    pre = trained_run(tmp_path_factory, "pre", "--model", "plain_zero", *tiny, "--val-combos", "RGB")
    out = tmp_path / "expert"
    r = run_script("train_dw.py", "--model", "plain_zero", *tiny, "--pretrained", str(pre), "--train-channels", "R",
                   "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "pretrained" in r.stdout and (out / "best.pt").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for bad, named in ((str(tmp_path / "junk.pt"), "junk.pt"), (str(tmp_path / "none.pt"), "none.pt")):
        r = run_script("train_dw.py", "--model", "dwg", *tiny, "--pretrained", bad, "--out", str(tmp_path / "x"))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], r.stderr
        assert not (tmp_path / "x").exists()
