import os

import pytest
import torch

import models
from models.shallow import RepConv
from utils.complexity import complexity_row, count_weighted_layers

TASK2 = ["resnet34", "rrdb", "rrdb_rnn", "repshallow", "shallow"]
EXPECTED_LAYERS = {"resnet34": 37, "rrdb": 8, "rrdb_rnn": 11, "repshallow": 4, "shallow": 4}


def _randomise_bn(model):
    """Give every BatchNorm non-trivial statistics so that folding it is really exercised."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", TASK2)
@pytest.mark.parametrize("size", [32, 64, 97])
def test_shapes_and_layer_counts(name, size):
    model = models.inference_form(models.create_model(name, 10))
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert count_weighted_layers(model, size) == EXPECTED_LAYERS[name]


def test_shallow_is_within_the_limit_and_resnet34_is_not_pretrained():
    assert count_weighted_layers(models.inference_form(models.create_model("shallow", 50)), 224) <= 4
    a, b = models.create_model("resnet34", 5), models.create_model("resnet34", 5)
    assert not torch.equal(a.net.conv1.weight, b.net.conv1.weight)  # random init, no fixed weights


@pytest.mark.parametrize("cin, cout, k, stride", [(3, 8, 5, 2), (8, 8, 3, 1), (8, 16, 3, 1)])
def test_repconv_fold_is_exact(cin, cout, k, stride):
    torch.manual_seed(0)
    block = RepConv(cin, cout, k, stride)
    _randomise_bn(block)
    block.eval()
    x = torch.randn(2, cin, 15, 15)
    with torch.no_grad():
        ref = block(x)
        block.deploy()
        out = block(x)
    assert not hasattr(block, "conv_k")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_deployed_shallow_model_matches_training_form():
    torch.manual_seed(0)
    model = models.create_model("shallow", 10)
    _randomise_bn(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        trained_layers = count_weighted_layers(model, 64)
        deployed = models.inference_form(model)
        out = deployed(x)
    assert trained_layers > 4 == count_weighted_layers(deployed, 64)
    assert count_weighted_layers(model, 64) == trained_layers  # the model itself is left as it was
    assert (out - ref).abs().max() < 1e-4


def test_complexity_row_columns():
    row = complexity_row(models.create_model("rrdb", 50))
    assert set(row) >= {"params", "macs", "flops", "fwd_bwd_mb", "params_mb", "layers"}
    assert row["flops"] == 2 * row["macs"] > 0
    assert 0.1e6 < row["params"] < 0.2e6  # the original reported 0.17M


def test_deploy_twice_is_a_no_op_and_a_model_can_be_built_deployed():
    torch.manual_seed(0)
    model = models.create_model("shallow", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        deployed = models.inference_form(model)
        once = deployed(x)
        torch.testing.assert_close(models.inference_form(deployed)(x), once)
        model = deployed
        built = models.create_model("shallow", 10, deploy=True).eval()
        assert built.state_dict().keys() == model.state_dict().keys()
        built.load_state_dict(model.state_dict())
        torch.testing.assert_close(built(x), once)
    assert count_weighted_layers(built, 32) == 4


def test_deployed_checkpoint_from_test_rrdb_loads_back(tmp_path):
    import test_rrdb
    import train_rrdb
    from models.loading import load_model
    tiny = ["--data-root", "synthetic", "--limit", "32", "--img-size", "16", "--batch-size", "16",
            "--workers", "0", "--epochs", "1"]
    assert train_rrdb.main(["--model", "shallow", "--out", str(tmp_path / "s"), *tiny]) == 0
    assert train_rrdb.main(["--model", "resnet34", "--out", str(tmp_path / "r"), *tiny]) == 0
    assert test_rrdb.main(["--checkpoints", str(tmp_path / "s" / "best.pt"), str(tmp_path / "s" / "last.pt"),
                           "--baseline",
                           str(tmp_path / "r" / "best.pt"), "--data-root", "synthetic", "--limit", "16",
                           "--workers", "0", "--out", str(tmp_path / "cmp"),
                           "--save-deployed", str(tmp_path / "deployed")]) == 0
    # two checkpoints of one model: two files, the first not overwritten by the second
    assert sorted(os.listdir(tmp_path / "deployed")) == ["resnet34.pt", "shallow-2.pt", "shallow.pt"]
    from data import describe_root
    classes = describe_root("synthetic").classes
    ckpt, model = load_model(str(tmp_path / "deployed" / "shallow.pt"), classes)
    assert ckpt["deployed"] and count_weighted_layers(model, 16) == 4
    _, trained = load_model(str(tmp_path / "s" / "best.pt"), classes)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), models.inference_form(trained)(x), atol=1e-4, rtol=1e-4)


def test_deep_trained_shallow_merges_exactly_once_its_activations_are_gone():
    torch.manual_seed(0)
    model = models.create_model("shallow_deep", 10)
    _randomise_bn(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    model.set_progress(0.2)  # slope 0.4 with deep_train 0.5: still non-linear
    with pytest.raises(ValueError, match="deep training has not finished"):
        models.inference_form(model)
    model.set_progress(0.5)
    with torch.no_grad():
        ref = model(x)
        trained_layers = count_weighted_layers(model, 64)
        model = models.inference_form(model)
        model.deploy()  # idempotent
        out = model(x)
    assert trained_layers == 3 * 3 + 1 and count_weighted_layers(model, 64) == 4
    assert (out - ref).abs().max() < 1e-4
    built = models.create_model("shallow_deep", 10, deploy=True)
    built.load_state_dict(model.state_dict())  # the merged form loads into one built deployed


def test_the_training_loop_anneals_the_activation(tmp_path):
    import train_rrdb
    from utils.checkpoint import load_checkpoint
    out = tmp_path / "deep"
    assert train_rrdb.main(["--model", "shallow_deep", "--data-root", "synthetic", "--limit", "32",
                            "--img-size", "32", "--batch-size", "16", "--workers", "0", "--epochs", "4",
                            "--out", str(out)]) == 0
    slopes = {k: float(v) for k, v in load_checkpoint(str(out / "last.pt"))["state_dict"].items()
              if k.endswith("slope")}
    assert len(slopes) == 3 and set(slopes.values()) == {1.0}  # gone after half of the 8 steps
