"""The weighted-layer count that Task 2's limit rests on: every way of applying a learned weight
counts, whatever the operator is called; what applies no weight does not."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
import test_rrdb
import train_rrdb
from models.registry import _MODELS, register
from models.rgb_only import RGBOnly
from utils.complexity import count_weighted_layers


class Probe(nn.Module):
    """``forward(x, names)`` pools the image to 8 features and applies ``fn(self, h)``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(torch.randn(8, 8))
        self.w3 = nn.Parameter(torch.randn(1, 8, 8))
        self.b = nn.Parameter(torch.randn(8))
        self.k = nn.Parameter(torch.randn(3, 3, 3, 3))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.tconv1 = nn.ConvTranspose1d(1, 2, 3)
        self.tconv3 = nn.ConvTranspose3d(1, 2, 3)
        self.bil = nn.Bilinear(8, 8, 4)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x, names=None):
        return self.fn(self, x)


def pooled(x):
    return F.adaptive_avg_pool2d(x, (2, 4)).flatten(1)[:, :8]


CASES = {  # how the weight is applied -> applications of a learned weight
    "@": (lambda m, x: pooled(x) @ m.w, 1),
    "torch.matmul": (lambda m, x: torch.matmul(pooled(x), m.w), 1),
    "mm of a transpose": (lambda m, x: torch.mm(pooled(x), m.w.t()), 1),
    "addmm": (lambda m, x: torch.addmm(m.b, pooled(x), m.w), 1),
    "bmm": (lambda m, x: torch.bmm(pooled(x)[:, None], m.w3.expand(len(x), -1, -1)), 1),
    "baddbmm": (lambda m, x: torch.baddbmm(m.b, pooled(x)[:, None], m.w3.expand(len(x), -1, -1)), 1),
    "einsum": (lambda m, x: torch.einsum("bi,ij->bj", pooled(x), m.w), 1),
    "unfold + matmul": (lambda m, x: m.k.flatten(1) @ F.unfold(x, 3), 1),
    "conv2d twice": (lambda m, x: F.conv2d(F.conv2d(x, m.k, padding=1), m.k), 2),
    "MultiheadAttention": (lambda m, x: m.attn(*[pooled(x)[:, None]] * 3)[0], 2),  # in and out projections
    "ConvTranspose1d": (lambda m, x: m.tconv1(pooled(x)[:, None]), 1),
    "ConvTranspose3d": (lambda m, x: m.tconv3(x[:, :1, None, :4, :4].expand(-1, -1, 3, -1, -1)), 1),
    "F.bilinear": (lambda m, x: m.bil(pooled(x), pooled(x)), 1),
    "a kernel generated from weights": (lambda m, x: F.conv2d(x, m.k * m.b[:3, None, None, None]), 1),
    "bias, BatchNorm, elementwise weight": (lambda m, x: m.bn(pooled(x) * m.w[0] + m.b), 0),
    "two activations (attention scores)": (lambda m, x: pooled(x)[:, :, None] @ pooled(x)[:, None], 0),
}


@pytest.mark.parametrize("case", CASES)
def test_every_application_of_a_weight_counts_once(case):
    fn, expected = CASES[case]
    assert count_weighted_layers(Probe(fn), img_size=8) == expected


def test_task1_and_task2_models_count_what_they_run():
    assert count_weighted_layers(models.create_model("shallow", 10)) == 7  # k x k and 1 x 1 branches
    assert count_weighted_layers(models.inference_form(models.create_model("shallow", 10))) == 4
    assert count_weighted_layers(models.create_model("resnet34", 10)) == 37
    # dwg's stem generates its kernel from the channel embeddings: one convolution on the data
    n, ops = count_weighted_layers(models.create_model("dwg", 10, backbone="small"), ops=True)
    assert (n, ops[0]) == (5, "convolution")


@pytest.fixture
def hidden_layer_model():
    """A 'shallow' network that declares 4 layers and hides a fifth in a matmul."""
    class Hidden(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.convs = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.Conv2d(8, 8, 3, 2), nn.ReLU(),
                                       nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.secret = nn.Parameter(torch.eye(8))
            self.fc = nn.Linear(8, classes)

        def forward(self, x):
            return self.fc(torch.relu(self.convs(x) @ self.secret))

    register("hidden_matmul", task=2, max_layers=4)(lambda num_classes: RGBOnly(Hidden(num_classes)))
    yield "hidden_matmul"
    del _MODELS["hidden_matmul"]


def test_test_rrdb_refuses_a_model_above_its_declared_limit(tmp_path, hidden_layer_model, capsys):
    out = tmp_path / "run"
    assert train_rrdb.main(["--model", hidden_layer_model, "--data-root", "synthetic", "--limit", "32",
                            "--img-size", "16", "--batch-size", "16", "--workers", "0", "--epochs", "1",
                            "--out", str(out)]) == 0
    with pytest.raises(SystemExit) as exc:
        test_rrdb.main(["--checkpoints", str(out / "best.pt"), "--data-root", "synthetic", "--limit", "32",
                        "--workers", "0", "--out", str(tmp_path / "eval")])
    assert exc.value.code == 2
    assert "deployed hidden_matmul runs 5 weighted layers, above its limit of 4" in capsys.readouterr().err


def test_each_task_evaluation_script_refuses_the_other_tasks_model(tmp_path, capsys):
    """A Task 2 checkpoint given to test_dw.py is one line that names test_rrdb.py (test_rrdb.py
    refuses a Task 1 model the same way: test_bad_input.py)."""
    import test_dw
    out = tmp_path / "run"
    assert train_rrdb.main(["--model", "shallow", "--data-root", "synthetic", "--limit", "16", "--img-size", "16",
                            "--batch-size", "16", "--workers", "0", "--epochs", "1", "--out", str(out)]) == 0
    with pytest.raises(SystemExit) as exc:
        test_dw.main(["--checkpoint", str(out), "--data-root", "synthetic", "--limit", "16", "--workers", "0",
                      "--combos", "R", "--out", str(tmp_path / "eval")])
    assert exc.value.code == 2 and not (tmp_path / "eval").exists()
    assert "is a Task 2 model ('shallow'): evaluate it with test_rrdb.py" in capsys.readouterr().err
