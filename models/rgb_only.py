"""What every Task 2 model shares: the Task 1 models' ``model(x, channels)`` call on an RGB
classifier, and the inference form (``deploy``) of what it wraps.

Layers are counted by ``utils.complexity.count_weighted_layers``: every convolution or linear
layer applied in a forward pass of the deployed model (a recurrent layer counts once per step).
"""
import torch.nn as nn


class RGBOnly(nn.Module):
    """Gives an RGB classifier the ``model(x, channels)`` call of the Task 1 models."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, channels=None):
        if channels is not None and "".join(channels) != "RGB":
            raise ValueError(f"this model takes RGB input only, got {''.join(channels)!r}")
        return self.net(x)

    def deploy(self):
        if hasattr(self.net, "deploy"):
            self.net.deploy()
        return self

    def set_progress(self, fraction):
        if hasattr(self.net, "set_progress"):
            self.net.set_progress(fraction)
