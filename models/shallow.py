"""Task 2: our shallow networks (at most 4 weighted layers once deployed) against a
from-scratch ResNet34: RepVGG-style re-parameterised convolutions, optionally deep-trained.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.validate import check

from .registry import register
from .rgb_only import RGBOnly


def fold_bn(weight, bn):
    """Kernel and bias of ``bn(conv(x))`` as one biased convolution (inference statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepConv(nn.Module):
    """RepVGG-style block: k x k, 1x1 and identity branches (each with BatchNorm) while training,
    folded into a single biased k x k convolution by ``deploy()``, which gives identical outputs.
    ``deploy=True`` builds the folded form directly (to load a deployed state dict); ``deploy()``
    on a folded block does nothing."""

    def __init__(self, cin, cout, k=3, stride=1, deploy=False):
        super().__init__()
        self.cin, self.cout, self.k, self.stride = cin, cout, k, stride
        if deploy:
            self.fused = nn.Conv2d(cin, cout, k, stride, k // 2)
            return
        self.fused = None
        self.conv_k = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn_k = nn.BatchNorm2d(cout)
        self.conv_1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.bn_1 = nn.BatchNorm2d(cout)
        self.bn_id = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None

    def forward(self, x):
        if self.fused is not None:
            return self.fused(x)
        y = self.bn_k(self.conv_k(x)) + self.bn_1(self.conv_1(x))
        return y + self.bn_id(x) if self.bn_id is not None else y

    @torch.no_grad()
    def deploy(self):
        if self.fused is not None:
            return self
        w, b = fold_bn(self.conv_k.weight, self.bn_k)
        w1, b1 = fold_bn(F.pad(self.conv_1.weight, [self.k // 2] * 4), self.bn_1)
        w, b = w + w1, b + b1
        if self.bn_id is not None:
            eye = torch.zeros_like(self.conv_k.weight)
            eye[torch.arange(self.cin), torch.arange(self.cin), self.k // 2, self.k // 2] = 1
            wi, bi = fold_bn(eye, self.bn_id)
            w, b = w + wi, b + bi
        fused = nn.Conv2d(self.cin, self.cout, self.k, self.stride, self.k // 2).to(w.device)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        for name in ("conv_k", "bn_k", "conv_1", "bn_1", "bn_id"):
            delattr(self, name)
        self.fused = fused
        return self


class DeepTrainedConv(nn.Module):
    """One weighted layer trained as two (VanillaNet's deep training, Chen et al. 2023): a RepConv,
    a leaky ReLU whose negative slope goes from 0 (a ReLU) to 1 (the identity) as training
    progresses (``set_progress``), then a 1x1 convolution with BatchNorm. Once the slope is 1 the
    pair is linear and ``deploy()`` merges it into one biased k x k convolution, exactly.
    ``deploy=True`` builds the merged form directly."""

    def __init__(self, cin, cout, k=3, stride=1, deploy=False):
        super().__init__()
        self.first = RepConv(cin, cout, k, stride, deploy=deploy)
        if deploy:
            self.second = None
            return
        self.second = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.register_buffer("slope", torch.zeros(()))  # in the state dict: a resumed run keeps it

    def set_progress(self, slope):
        self.slope.fill_(min(max(slope, 0.0), 1.0))

    def forward(self, x):
        x = self.first(x)
        if self.second is None:
            return x
        return self.bn(self.second(F.leaky_relu(x, float(self.slope))))

    @torch.no_grad()
    def deploy(self):
        if self.second is None:
            return self
        if float(self.slope) != 1.0:
            raise ValueError(f"deep training has not finished (activation slope {float(self.slope):.3f}, "
                             "not 1): the two convolutions cannot merge yet")
        conv = self.first.deploy().fused
        w2, b2 = fold_bn(self.second.weight, self.bn)
        w2 = w2[:, :, 0, 0]
        conv.weight.copy_(torch.einsum("oc,cikl->oikl", w2, conv.weight))
        conv.bias.copy_(w2 @ conv.bias + b2)
        for name in ("second", "bn", "slope"):
            delattr(self, name)
        self.second = None
        return self


# Bounds on the options (--model-opt): far above any design here, far below what fails only once
# memory runs out (2048 x 2048 x 3 x 3 weights are 150 MB).
MAX_WIDTH, MAX_KERNEL = 2048, 15


def check_shallow_options(widths, first_kernel, dropout, deploy, deep_train):
    """TypeError or ValueError for an option ``ShallowNet`` cannot be built with."""
    check("widths", widths, list, 1, MAX_WIDTH, each=int, length=3)
    check("first_kernel", first_kernel, int, 1, MAX_KERNEL)
    if first_kernel % 2 == 0:  # the 1x1 branch folds into the centre of the kernel
        raise ValueError(f"first_kernel must be odd, got {first_kernel}")
    check("dropout", dropout, float, 0, 0.99)
    check("deploy", deploy, bool)
    check("deep_train", deep_train, float, 0, 1)


class ShallowNet(nn.Module):
    """Three wide re-parameterised convolutions and a linear classifier: 4 weighted layers.

    Depth is traded for width and early, cheap downsampling (a strided first layer and max
    pooling, neither of which counts as a weighted layer). Each convolution trains as a
    multi-branch RepConv and deploys as one plain convolution.
    """

    def __init__(self, num_classes, widths=(96, 256, 512), first_kernel=5, dropout=0.1, deploy=False,
                 deep_train=0.0):
        super().__init__()
        check_shallow_options(widths, first_kernel, dropout, deploy, deep_train)
        w0, w1, w2 = widths
        # deep_train: the fraction of training over which each layer's inner activation becomes
        # the identity (VanillaNet); 0 trains each layer as one RepConv.
        block = DeepTrainedConv if deep_train else RepConv
        self.deep_train = deep_train
        self.features = nn.Sequential(
            block(3, w0, first_kernel, stride=2, deploy=deploy), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            block(w0, w1, 3, deploy=deploy), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            block(w1, w2, 3, deploy=deploy), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(w2, num_classes))

    def forward(self, x):
        return self.head(self.features(x))

    def set_progress(self, fraction):
        """Called by the training loop with the fraction of training done (deep training only)."""
        for m in self.modules():
            if isinstance(m, DeepTrainedConv) and m.second is not None:
                m.set_progress(fraction / self.deep_train)

    def deploy(self):
        """Merge deep-trained pairs and fold every re-parameterised block (idempotent)."""
        for m in list(self.modules()):
            if isinstance(m, (DeepTrainedConv, RepConv)):
                m.deploy()
        return self


@register("repshallow", task=2, max_layers=4)
def repshallow(num_classes, widths=(96, 256, 512), first_kernel=5, deploy=False):
    """Ours: 3 RepVGG-style convolutions + linear, 4 weighted layers once deployed."""
    return RGBOnly(ShallowNet(num_classes, widths, first_kernel, deploy=deploy))


@register("shallow_deep", task=2, max_layers=4)
def shallow_deep(num_classes, widths=(96, 256, 512), first_kernel=5, deploy=False, deep_train=0.5):
    """``shallow`` deep-trained: each layer two convolutions whose activation fades over the first
    ``deep_train`` of training, merged into one for deployment (4 weighted layers)."""
    return RGBOnly(ShallowNet(num_classes, widths, first_kernel, deploy=deploy, deep_train=deep_train))


@register("shallow", task=2, max_layers=4)
def shallow(num_classes, widths=(96, 256, 512), first_kernel=5, deploy=False):
    """The current best shallow design (see README, Task 2)."""
    return repshallow(num_classes, widths, first_kernel, deploy)
