"""Task 1 training: the sandwich criterion, BatchNorm statistics per channel set, starting from
trained RGB weights (our checkpoints, torchvision files, torchvision's ImageNet weights)."""
import os
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

import models
import train_dw
from data.datasets import normalize
from engine import Run, State, train_one_epoch
from losses import LabelLoss, SandwichLoss, soft_cross_entropy
from models.channel_models import MIN_SEEN
from models.loading import init_from
from models.norm import ComboBatchNorm2d, combo_index
from utils.checkpoint import save_atomic
from utils.errors import UserError


def _tiny_dwg(classes=4):
    torch.manual_seed(0)
    model = models.create_model("dwg", classes, backbone="small")
    with torch.no_grad():  # give the zero-initialised hypernetwork weights so that every path matters
        model.stem.fc2.weight.normal_(0, 0.3)
    return model


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    by_hand = (torch.log(torch.tensor(2.0)) + 0.5 * (-(2 - torch.log(1 + torch.exp(torch.tensor(2.0))))
                                                      - (0 - torch.log(1 + torch.exp(torch.tensor(2.0)))))) / 2
    torch.testing.assert_close(soft_cross_entropy(logits, target), by_hand)


def test_sandwich_draws_a_single_channel_first_then_proper_subsets():
    crit = SandwichLoss(LabelLoss(), subsets=3, generator=torch.Generator().manual_seed(0))
    for _ in range(50):
        draws = crit.draw(("R", "G", "B"))
        assert len(draws) == 3 and len(draws[0]) == 1
        assert all(1 <= len(d) <= 2 and d == sorted(d) for d in draws)


def test_sandwich_step_equals_the_hand_written_loss():
    """One step of the loop with the sandwich: one optimizer step on the summed gradients of the
    full-set label loss and each reduced set's loss towards the full set's *detached* output."""
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)  # what a loader yields
    model, x, y = _tiny_dwg().train(), normalize(images), torch.randint(0, 4, (8,))
    draws = SandwichLoss(LabelLoss(0.1), 2, torch.Generator().manual_seed(5)).draw("RGB")

    reference = _tiny_dwg().train()
    full = reference(x, tuple("RGB"))
    target = F.softmax(full.detach(), 1)
    label = F.cross_entropy(full, y, label_smoothing=0.1)
    distill = sum(soft_cross_entropy(reference(x[:, keep], tuple("RGB"[i] for i in keep)), target) for keep in draws)
    (label + distill).backward()
    expected = {n: p.detach() - p.grad for n, p in reference.named_parameters() if p.grad is not None}

    crit = SandwichLoss(LabelLoss(0.1), 2, torch.Generator().manual_seed(5))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    stats = train_one_epoch(Run(model, crit), State(opt, sched), [(images, y)], 1)
    assert stats["step"] == 1
    assert (stats["loss"], stats["distill"]) == pytest.approx((label.item(), distill.item()), rel=1e-5)
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.detach(), expected[name], atol=1e-5, rtol=1e-4, msg=name)


def _hand_drawn(gen, n=3, subsets=2):
    """The sandwich's draws written out: a single channel, then a size in [1, n) and which."""
    draws = []
    for i in range(subsets):
        k = 1 if i == 0 else int(torch.randint(1, n, (1,), generator=gen))
        draws.append(sorted(torch.randperm(n, generator=gen)[:k].tolist()))
    return draws


@pytest.mark.parametrize("options", [{"fraction": 0.25}, {"every": 2}, {"fraction": 0.5, "every": 2}])
def test_cheaper_sandwich_steps_equal_the_hand_written_loss(options):
    """Two steps of the loop: the first a sandwich whose reduced passes take their own slice of
    the batch (``fraction``); with ``every`` 2 the second step is one pass on a hierarchically
    sampled combination, on the labels."""
    fraction, every = options.get("fraction", 1), options.get("every", 1)
    images = [torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8) for _ in range(2)]
    labels = [torch.randint(0, 4, (8,)) for _ in range(2)]

    reference, gen = _tiny_dwg().train(), torch.Generator().manual_seed(5)
    opt = torch.optim.SGD(reference.parameters(), lr=1.0)
    losses, distills = [], []
    for step, (u8, y) in enumerate(zip(images, labels)):
        x = normalize(u8)
        opt.zero_grad()
        if step % every == 0:
            full = reference(x, tuple("RGB"))
            target = F.softmax(full.detach(), 1)
            loss = F.cross_entropy(full, y, label_smoothing=0.1)
            losses.append(loss.item())
            m = round(fraction * 8)
            for i, keep in enumerate(_hand_drawn(gen)):
                rows = [(i * m + j) % 8 for j in range(m)]
                xr = x[rows][:, keep]
                loss = loss + soft_cross_entropy(reference(xr, tuple("RGB"[c] for c in keep)), target[rows])
            distills.append(loss.item() - losses[-1])
        else:
            k = int(torch.randint(1, 4, (1,), generator=gen))
            keep = sorted(torch.randperm(3, generator=gen)[:k].tolist())
            loss = F.cross_entropy(reference(x[:, keep], tuple("RGB"[c] for c in keep)), y, label_smoothing=0.1)
            losses.append(loss.item())
        loss.backward()
        opt.step()

    model = _tiny_dwg().train()
    crit = SandwichLoss(LabelLoss(0.1), 2, torch.Generator().manual_seed(5), **options)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    stats = train_one_epoch(Run(model, crit), State(opt, sched), list(zip(images, labels)), 1)
    assert stats["step"] == 2 and crit.steps == 2
    assert stats["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)  # the label passes
    assert stats["distill"] == pytest.approx(sum(distills) / len(distills), rel=1e-4)  # the sandwich steps' rest
    expected = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name].detach(), atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("sync_every_pass", [False, True])
def test_ddp_sandwich_all_reduces_once_a_step_and_equals_one_process(tmp_path, sync_every_pass):
    """Two gloo processes, two sandwich steps of 1 + 2 passes: the passes before the last run
    under no_sync, so gradients are all-reduced once a step (twice in all; six times when every
    pass syncs), and the weights equal one process that averages the two shards' gradients."""
    from tests import ddp_sandwich_step as ddp
    from tests.conftest import run_script
    out = tmp_path / "ddp.pt"
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "tests/ddp_sandwich_step.py", str(out), *(["--sync-every-pass"] if sync_every_pass else []))
    assert r.returncode == 0, r.stderr
    result = torch.load(out, weights_only=True)
    assert result["rounds"] == (6 if sync_every_pass else 2)

    for name, p in ddp.one_process_weights().items():
        torch.testing.assert_close(result["state_dict"][name], p, atol=1e-5, rtol=1e-4, msg=name)


def test_ddp_accumulation_all_reduces_on_the_last_micro_batch_only(tmp_path):
    """Two sandwich micro-batches, one optimizer step: one all-reduce round in all."""
    from tests.conftest import run_script
    out = tmp_path / "ddp.pt"
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "tests/ddp_sandwich_step.py", str(out), "--accumulate")
    assert r.returncode == 0, r.stderr
    assert torch.load(out, weights_only=True)["rounds"] == 1


def test_each_channel_set_uses_its_own_batchnorm_statistics():
    model = _tiny_dwg().eval()
    x = torch.randn(4, 3, 16, 16)
    sets = {"RGB": [0, 1, 2], "RB": [0, 2], "R": [0], "G": [1]}
    model.combo_seen.fill_(MIN_SEEN)
    with torch.no_grad():
        before = {c: model(x[:, i], tuple(c)) for c, i in sets.items()}
        k = combo_index("R", "RGB")
        for bn in model.modules():
            if isinstance(bn, ComboBatchNorm2d):
                bn.running_mean[k] += 1.0
        after = {c: model(x[:, i], tuple(c)) for c, i in sets.items()}
        assert not torch.allclose(after["R"], before["R"])
        for c in ("RGB", "RB", "G"):
            torch.testing.assert_close(after[c], before[c])
        # a row trained on too few batches is not trusted: R is then evaluated with RGB's statistics
        model.combo_seen[k] = MIN_SEEN - 1
        untrusted = model(x[:, [0]], ("R",))
        model.combo_seen[k] = MIN_SEEN
        for bn in model.modules():
            if isinstance(bn, ComboBatchNorm2d):
                bn.running_mean[k] = bn.running_mean[-1]
                bn.running_var[k] = bn.running_var[-1]
        torch.testing.assert_close(untrusted, model(x[:, [0]], ("R",)))


def test_a_set_never_seen_falls_back_to_the_full_set_statistics():
    model = _tiny_dwg().eval()
    x = torch.randn(2, 1, 16, 16)
    first = next(m for m in model.modules() if isinstance(m, ComboBatchNorm2d))
    k = combo_index("G", "RGB")
    with torch.no_grad():
        first.running_mean[k] += 5.0  # ignored while G was never trained
        unseen = model(x, ("G",))
        first.running_mean[-1] += 1.0  # the full set's row
        assert not torch.allclose(model(x, ("G",)), unseen)
    model.train()(x.expand(2, 1, 16, 16).contiguous(), ("G",))
    assert model.combo_seen.tolist() == [0, 1, 0, 0, 0, 0, 0]


def test_training_updates_only_the_statistics_of_the_set_it_ran():
    model = _tiny_dwg().train()
    first = next(m for m in model.modules() if isinstance(m, ComboBatchNorm2d))
    before = first.running_mean.clone()
    model(torch.randn(4, 2, 16, 16), ("G", "B"))
    changed = (first.running_mean != before).any(1).tolist()
    assert changed == [i == combo_index("GB", "RGB") for i in range(7)]


def _perturbed_bn(model):
    """Non-trivial running statistics, so that equalities do not hold by accident."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
def test_dwg_initialised_from_a_plain_model_equals_it_on_rgb(tmp_path, backbone):
    torch.manual_seed(0)
    plain = _perturbed_bn(models.create_model("plain_zero", 5, backbone=backbone)).eval()
    path = tmp_path / "pz.pt"
    save_atomic({"model": "plain_zero", "config": {"backbone": backbone}, "classes": list("abcde"),
                 "state_dict": plain.state_dict()}, path)
    dwg = init_from(models.create_model("dwg", 5, backbone=backbone), str(path), list("abcde")).eval()
    mean_fill = models.create_model("plain_mean", 5, backbone=backbone).eval()
    mean_fill.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dwg(x, tuple("RGB")), plain(x, tuple("RGB")), atol=1e-5, rtol=0)
        # and on a subset it starts as the mean-filling rival, not from nothing
        torch.testing.assert_close(dwg(x[:, [2]], ("B",)), mean_fill(x[:, [2]], ("B",)), atol=1e-5, rtol=0)


def test_init_from_refuses_weights_of_another_body(tmp_path):
    other = models.create_model("plain_zero", 5, backbone="resnet18")
    path = tmp_path / "r18.pt"
    save_atomic({"model": "plain_zero", "config": {"backbone": "resnet18"}, "classes": list("abcde"),
                 "state_dict": other.state_dict()}, path)
    with pytest.raises(UserError, match="do not fit this model"):
        init_from(models.create_model("dwg", 5, backbone="small"), str(path), list("abcde"))


def _legacy_densenet_keys(state):
    """torchvision's released DenseNet files spell ``norm1`` as ``norm.1`` (and so on)."""
    import re
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}


def test_torchvision_densenet_file_with_legacy_keys_loads(tmp_path, capsys):
    torch.manual_seed(0)
    ref = torchvision.models.densenet121(num_classes=1000)
    state = _legacy_densenet_keys(ref.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    torch.save(state, tmp_path / "densenet121.pth")
    model = models.create_model("dwg", 7, backbone="densenet121", pretrained=str(tmp_path / "densenet121.pth"))
    torch.testing.assert_close(model.body.features.denseblock1.denselayer1.norm1.weight,
                               ref.features.denseblock1.denselayer1.norm1.weight)
    torch.testing.assert_close(model.stem.base.transpose(0, 1), ref.features.conv0.weight)
    assert "loaded" in capsys.readouterr().out


def test_pretrained_file_of_another_architecture_is_refused(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match="convolutions did not load"):
        models.create_model("dwg", 7, backbone="densenet121", pretrained=str(tmp_path / "r18.pth"))


def test_imagenet_weights_come_from_the_torch_home_cache(tmp_path, monkeypatch):
    """``--pretrained imagenet`` goes through torchvision's weights API; a file already in
    $TORCH_HOME is used as it is (no download here), and RGB logits match the plain model's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(0)
    ref = _perturbed_bn(torchvision.models.resnet18())
    os.makedirs(tmp_path / "hub" / "checkpoints")
    torch.save(ref.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url))
    plain = models.create_model("plain_zero", 7, backbone="resnet18", pretrained="imagenet").eval()
    dwg = models.create_model("dwg", 7, backbone="resnet18", pretrained="imagenet").eval()
    dwg.body.fc.load_state_dict(plain.body.fc.state_dict())  # the 7-class classifier is new in both
    torch.testing.assert_close(plain.body.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dwg(x, tuple("RGB")), plain(x, tuple("RGB")), atol=1e-5, rtol=0)


def test_imagenet_weights_offline_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"offline, put https://\S+resnet18\S+ at .*hub/checkpoints/"):
        models.create_model("dwg", 7, backbone="resnet18", pretrained="imagenet")
    with pytest.raises(UserError, match="no ImageNet weights for backbone 'small'"):
        models.create_model("dwg", 7, backbone="small", pretrained="imagenet")


TINY = ["--data-root", "synthetic", "--limit", "64", "--img-size", "16", "--batch-size", "16",
        "--workers", "0", "--epochs", "1", "--backbone", "small"]


def test_train_dwg_from_a_plain_run(tmp_path, capsys):
    assert train_dw.main(["--model", "plain_zero", "--out", str(tmp_path / "pz"), *TINY]) == 0
    assert train_dw.main(["--model", "dwg", "--init-from", str(tmp_path / "pz" / "best.pt"), "--sandwich-every", "1",
                          "--out", str(tmp_path / "dwg"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "initialised from" in out and "sandwich" in out
    ckpt = torch.load(tmp_path / "dwg" / "best.pt", weights_only=False)
    assert ckpt["args"]["channel_aug"] == "sandwich"
    seen = ckpt["state_dict"]["combo_seen"]  # 4 sandwich steps: the full set each step, a single channel each step
    assert seen[-1] == 4 and sum(seen[combo_index(c, "RGB")] for c in "RGB") >= 4


@pytest.mark.parametrize("flags, message", [
    (["--model", "dwg", "--train-channels", "R"], "--train-channels R trains one fixed combination"),
    (["--model", "plain_zero", "--no-stem-base"], "model 'plain_zero' has no option 'base'"),
])
def test_conflicting_task1_flags_are_refused(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        train_dw.main([*flags, "--out", str(tmp_path / "x"), *TINY])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_sandwich_without_reduced_sets_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_dw.main(["--model", "dwg", "--sandwich-subsets", "0", "--out", str(tmp_path / "x"), *TINY])
    assert exc.value.code == 2 and "argument --sandwich-subsets: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x" / "last.pt").exists()
