"""Parameters, MACs (torchprofile), memory (torchinfo) and weighted-layer counts of a model."""
import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchinfo
from torch.overrides import TorchFunctionMode
from torchprofile import profile_macs

WEIGHTED_OPS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose2d, F.linear}


class _CountWeightedOps(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in WEIGHTED_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def count_weighted_layers(model, img_size=64, channels="RGB"):
    """Convolutions and linear layers applied in one forward pass of ``model`` as it is.

    Counted from the operations that actually run (a layer applied three times counts three
    times; a generated kernel counts like any other), never from a declared number. A first
    pass runs uncounted so that stems which cache their kernel are counted as deployed.
    """
    model.eval()
    x = torch.zeros(1, len(channels), img_size, img_size)
    model(x, tuple(channels))
    with _CountWeightedOps() as counter:
        model(x, tuple(channels))
    return counter.count


class FixedChannels(nn.Module):
    """``model(x)`` for tools that trace with tensors only: the channel names are bound here."""

    def __init__(self, model, channels):
        super().__init__()
        self.model, self.channels = model, tuple(channels)

    def forward(self, x):
        return self.model(x, self.channels)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def macs(model, channels="RGB", img_size=224):
    model.eval()
    x = torch.zeros(1, len(channels), img_size, img_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torchprofile's tracer warnings are not ours
        return int(profile_macs(FixedChannels(model, channels), x))


def memory_mb(model, channels="RGB", img_size=224):
    """torchinfo's estimate: forward/backward activation size and parameter size, in MB."""
    stats = torchinfo.summary(FixedChannels(model, channels), input_size=(1, len(channels), img_size, img_size),
                              verbose=0, device="cpu", mode="train")
    return {"fwd_bwd_mb": stats.to_megabytes(stats.total_output_bytes),
            "params_mb": stats.to_megabytes(stats.total_param_bytes)}


def complexity_row(model, channels="RGB", img_size=224):
    """The original's columns: Params, Multi-Adds, forward/backward memory, FLOPs; plus layers."""
    model = copy.deepcopy(model).eval()
    m = macs(model, channels, img_size)
    return {"params": n_params(model), "macs": m, "flops": 2 * m,
            **memory_mb(model, channels, img_size),
            "layers": count_weighted_layers(model, img_size, channels)}


def stem_cost(model, channels="RGB", img_size=224):
    """The stem's own params and MACs, against a plain convolution of the same shape for
    these channels; MACs are measured with the kernel generation included (training) and with
    the kernel cached (inference)."""
    stem = model.stem
    shape = _stem_shape(stem)
    plain = nn.Conv2d(len(channels), shape["out"], shape["k"], shape["stride"], shape["padding"], bias=False)
    x = torch.zeros(1, len(channels), img_size, img_size)
    wrapped = FixedChannels(stem, channels).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generated = int(profile_macs(wrapped, x))
        plain_macs = int(profile_macs(plain, x))
        wrapped.eval()
        with torch.no_grad():
            stem(x, tuple(channels))  # fills the cache where the stem has one
            cached = int(profile_macs(wrapped, x))
    return {"channels": "".join(channels), "stem_params": n_params(stem), "plain_params": n_params(plain),
            "extra_params": n_params(stem) - n_params(plain), "stem_macs": generated,
            "stem_macs_cached": cached, "plain_macs": plain_macs,
            "extra_macs": generated - plain_macs, "extra_macs_cached": cached - plain_macs}


def _stem_shape(stem):
    inner = getattr(stem, "stem", stem)
    conv = getattr(inner, "conv", inner)
    return {"out": conv.out_channels, "k": conv.kernel_size if isinstance(conv.kernel_size, int) else conv.kernel_size[0],
            "stride": conv.stride if isinstance(conv.stride, int) else conv.stride[0],
            "padding": conv.padding if isinstance(conv.padding, int) else conv.padding[0]}
