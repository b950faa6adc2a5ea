"""Parameters, MACs (torchprofile), memory (torchinfo) and weighted-layer counts of a model."""
import copy
import warnings

import torch
import torch.nn as nn
import torchinfo
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torchprofile import profile_macs


def _key(t):
    """A tensor's storage, shared by all its views ("is this a view of a weight?")."""
    return t.untyped_storage().data_ptr() if t.numel() else None


class _WeightedApplications(TorchDispatchMode):
    """Counts the operations that apply a learned weight to the data, whatever their name.

    Every tensor an operation produces is classed by what it was computed from: *data* if any
    input is data (the model's input is), else a *weight* if any input is one, else neither.
    Tensors that existed before the pass (parameters, buffers, a cached kernel) are weights, and
    so is a kernel generated from them. An operation that takes data and is neither a view nor
    pointwise counts once per weight of two or more dimensions (as the operation sees it) that
    it takes: a convolution of any kind, a matrix product of any spelling (``@``, ``mm``,
    ``addmm``, ``bmm``, ``baddbmm``, ``einsum``, ``F.bilinear``, an unfolded convolution) counts
    once, a fused attention (both projections) twice; a bias, a norm's scale, shift and
    statistics (1-D, also a per-set row), an elementwise product with a weight and the product
    of two activations (attention's scores) do not.
    """

    def __init__(self, inputs):
        super().__init__()
        self.kind = {_key(x): "data" for x in inputs}  # tensors made before the pass: weights
        self.count, self.ops = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # shares its input's storage, and so its class
            return out
        kinds = [(t, self.kind.get(_key(t), "weight")) for t in pytree.tree_leaves((args, kwargs))
                 if isinstance(t, torch.Tensor) and _key(t) is not None]
        has_data = any(k == "data" for _, k in kinds)
        has_weight = any(k == "weight" for _, k in kinds)
        if has_data and torch.Tag.pointwise not in func.tags:
            applied = {_key(t) for t, k in kinds if k == "weight" and t.dim() >= 2}
            self.count += len(applied)  # a fused operation (attention's) applies several
            self.ops += [func.overloadpacket.__name__] * len(applied)
        kind = "data" if has_data else "weight" if has_weight else None
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and _key(t) is not None:
                self.kind[_key(t)] = kind
        return out


@torch.no_grad()
def count_weighted_layers(model, img_size=64, channels="RGB", ops=False):
    """Applications of a learned weight to the data in one forward pass of ``model`` as it is
    (``_WeightedApplications``); with ``ops`` also their operator names, in order.

    Counted from the operations that actually run (a layer applied three times counts three
    times; a kernel generated from weights counts like any other), never from a declared number.
    """
    model.eval()
    x = torch.zeros(1, len(channels), img_size, img_size)
    with _WeightedApplications([x]) as counter:
        model(x, tuple(channels))
    return (counter.count, counter.ops) if ops else counter.count


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
    k = conv.kernel_size if isinstance(conv.kernel_size, int) else conv.kernel_size[0]
    return {"out": conv.out_channels, "k": k,
            "stride": conv.stride if isinstance(conv.stride, int) else conv.stride[0],
            "padding": conv.padding if isinstance(conv.padding, int) else conv.padding[0]}
