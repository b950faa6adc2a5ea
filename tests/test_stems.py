import itertools

import pytest
import torch
import torch.nn.functional as F

import models
from models.stems import ChannelHyperStem, FilledStem, SeedDWGStem

ALL_COMBOS = ["".join(p) for k in (1, 2, 3) for p in itertools.permutations("RGB", k)]


@pytest.fixture(scope="module")
def dwg_small():
    torch.manual_seed(0)
    return models.create_model("dwg", 5, backbone="small").eval()


@pytest.mark.parametrize("size", [17, 32, 48])
def test_dwg_accepts_every_combination_and_size(dwg_small, size):
    for combo in ALL_COMBOS:
        out = dwg_small(torch.randn(2, len(combo), size, size), tuple(combo))
        assert out.shape == (2, 5)
        assert torch.isfinite(out).all()


def test_stem_vocabulary_is_not_hard_coded():
    stem = ChannelHyperStem(8, 3, padding=1, vocab="RGBN")  # e.g. near-infrared as a fourth band
    for k in range(1, 5):
        assert stem(torch.randn(2, k, 9, 9), tuple("RGBN"[:k])).shape == (2, 8, 9, 9)


def test_permuting_channels_with_their_names_leaves_output_unchanged(dwg_small):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = dwg_small(x, ("R", "G", "B"))
        for perm in itertools.permutations(range(3)):
            names = tuple("RGB"[i] for i in perm)
            torch.testing.assert_close(dwg_small(x[:, list(perm)], names), ref, atol=1e-5, rtol=1e-4)


def test_permuting_channels_without_names_changes_output(dwg_small):
    """The stem really uses the names: the same tensor under other names gives other outputs."""
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(dwg_small(x, ("R", "G", "B")), dwg_small(x, ("B", "G", "R")), atol=1e-4)


def test_kernel_depends_on_the_channel_set():
    """R's kernel when R comes alone differs from R's kernel inside RGB (set conditioning)."""
    stem = ChannelHyperStem(4, 3, base=False)
    alone = stem.kernel(("R",))[:, 0]
    with_others = stem.kernel(("R", "G", "B"))[:, 0] * 3  # undo the 1/C averaging
    assert not torch.allclose(alone, with_others, atol=1e-5)


def _randomised(stem):
    """The hypernetwork starts at zero when the stem has base kernels; give it weights to test."""
    with torch.no_grad():
        for p in stem.parameters():
            p.normal_(0, 0.3)
    return stem


@pytest.mark.parametrize("base", [True, False])
@pytest.mark.parametrize("combo", ["RGB", "BR", "G", "GBR"])
def test_kernel_matches_its_definition(combo, base):
    """The selector-matmul form equals the plain one: look up, average, MLP, mix templates, and
    add each present channel's base kernel plus an equal share of the missing channels' ones."""
    torch.manual_seed(0)
    stem = _randomised(ChannelHyperStem(6, 3, vocab="RGB", base=base))
    e = stem.embed(torch.tensor(["RGB".index(c) for c in combo]))
    mlp_in = torch.cat([e, e.mean(0, keepdim=True).expand_as(e)], 1)
    coef = stem.fc2(F.gelu(stem.fc1(mlp_in), approximate="tanh")) / len(combo)
    expected = torch.einsum("ct,tokl->ockl", coef, stem.templates)
    if base:
        missing = sum(stem.base[i] for i, c in enumerate("RGB") if c not in combo)
        for i, c in enumerate(combo):
            expected[:, i] += stem.base["RGB".index(c)] + missing / len(combo)
    torch.testing.assert_close(stem.kernel(tuple(combo)), expected)


def test_base_stem_starts_as_a_plain_convolution_that_mean_fills():
    """Before training: on RGB a plain conv with the base kernels; on a subset, the plain conv of
    the input with each missing channel replaced by the mean of the present ones."""
    torch.manual_seed(0)
    stem = ChannelHyperStem(6, 3, padding=1)
    plain = FilledStem(6, 3, padding=1, fill="mean")
    plain.load_state_dict({"conv.weight": stem.base.detach().transpose(0, 1)})
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        for combo in ("RGB", "GR", "B"):
            idx = ["RGB".index(c) for c in combo]
            torch.testing.assert_close(stem(x[:, idx], tuple(combo)), plain(x[:, idx], tuple(combo)),
                                       atol=1e-5, rtol=1e-4)


def test_batched_equals_per_image():
    torch.manual_seed(0)
    stem = ChannelHyperStem(6, 5, stride=2, padding=2).eval()
    x = torch.randn(4, 2, 20, 20)
    with torch.no_grad():
        batched = stem(x, ("G", "B"))
        single = torch.cat([stem(x[i:i + 1], ("G", "B")) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_seed_dwg_grouped_conv_equals_the_original_loop():
    torch.manual_seed(0)
    stem = SeedDWGStem(8, 7, stride=2, padding=3)
    x = torch.randn(5, 3, 33, 33)
    torch.testing.assert_close(stem(x), stem.forward_reference(x), atol=1e-5, rtol=1e-4)


def test_cached_kernel_equals_generated_kernel():
    torch.manual_seed(0)
    stem = ChannelHyperStem(6, 3, padding=1).eval()
    x = torch.randn(2, 2, 12, 12)
    with torch.no_grad():
        first = stem(x, ("R", "B"))
        assert (("R", "B"), x.device) in stem._cache
        second = stem(x, ("R", "B"))
        direct = F.conv2d(x, stem.kernel(("R", "B")), padding=1)
    torch.testing.assert_close(first, direct)
    torch.testing.assert_close(second, direct)


def test_cache_is_dropped_when_weights_change():
    torch.manual_seed(0)
    stem = ChannelHyperStem(6, 3, padding=1).eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        before = stem(x, ("G",))
        other = ChannelHyperStem(6, 3, padding=1)
        stem.load_state_dict(other.state_dict())
        after = stem(x, ("G",))
        torch.testing.assert_close(after, F.conv2d(x, other.kernel(("G",)), padding=1))
    assert not torch.allclose(before, after)
    stem.train()
    assert not stem._cache


def test_training_mode_regenerates_kernel_with_gradients():
    stem = _randomised(ChannelHyperStem(4, 3, padding=1)).train()
    stem(torch.randn(2, 2, 8, 8), ("R", "G")).sum().backward()
    assert stem.templates.grad is not None and stem.embed.weight.grad[:2].abs().sum() > 0
    assert stem.embed.weight.grad[2].abs().sum() == 0  # B was absent


def test_filled_stem_places_channels_by_name():
    zero = FilledStem(2, 1, fill="zero")
    mean = FilledStem(2, 1, fill="mean")
    x = torch.arange(8.0).view(1, 2, 2, 2)  # channels B, R
    z = zero.expand(x, ("B", "R"))
    torch.testing.assert_close(z[:, 2], x[:, 0])
    torch.testing.assert_close(z[:, 0], x[:, 1])
    assert (z[:, 1] == 0).all()
    m = mean.expand(x, ("B", "R"))
    torch.testing.assert_close(m[:, 1], x.mean(1))


def test_naive_models_run_on_missing_channels():
    for name in ("plain_zero", "plain_mean", "plain_dropout", "seed_dwg"):
        model = models.create_model(name, 4, backbone="small").eval()
        for combo in ("RGB", "GB", "R"):
            assert model(torch.randn(2, len(combo), 24, 24), tuple(combo)).shape == (2, 4)


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121"])
def test_full_size_backbones_take_the_stem(backbone):
    model = models.create_model("dwg", 7, backbone=backbone).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 64, 64), ("R", "B")).shape == (1, 7)


def test_pretrained_body_weights_load_from_a_local_file(tmp_path):
    import torchvision
    ref = torchvision.models.resnet18(num_classes=1000)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = models.create_model("plain_zero", 7, backbone="resnet18", pretrained=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.body.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    torch.testing.assert_close(model.stem.conv.weight, ref.conv1.weight)
