"""Network stems for inputs whose channels vary: which ones, how many, in what order.

Every stem here is called as ``stem(x, channels)`` where ``x`` is ``[B, C, H, W]`` and
``channels`` names the C input channels (e.g. ``("R", "B")``) in order.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ChannelHyperStem(nn.Module):
    """Generates a convolution kernel for whatever channels it is given (our Task 1 stem).

    Each channel of the vocabulary owns a learned embedding. For a call with channel set S, a
    small MLP reads every present channel's embedding together with the mean embedding of S and
    outputs mixing coefficients over a bank of shared kernel templates (template mixing, as in
    the CHAMMI baselines and DOFA's weight generator); the mixed template is that channel's
    ``out x k x k`` correction. Conditioning on S lets the R kernel differ when R arrives alone
    from when it arrives with G and B, so the stem can make up for what is missing.

    With ``base`` (the default) the correction is added to a plain kernel per vocabulary channel:
    channel c of S gets ``base[c]`` plus an equal share of the missing channels' base kernels,
    which is exactly a plain convolution whose missing inputs are filled with the mean of the
    present ones. The hypernetwork's last layer starts at zero, so before training the stem *is*
    that plain convolution: a trained RGB stem (ours, or an ImageNet one) loads into ``base``
    and the model starts with the plain model's RGB outputs. Without ``base`` the templates
    alone make the kernel (the earlier design).

    Kernels depend on the channel set, not on the pixels, so a batch shares one kernel and the
    convolution is a single ordinary ``conv2d``; averaging over the present channels keeps
    activations at the same scale for 1, 2 or 3 channels. In eval mode the kernel of each
    combination is generated once and cached: inference then costs one plain convolution.
    Permuting the input channels together with their names permutes the kernel's input slices
    the same way, so the output does not change.
    """

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, vocab="RGB",
                 embed_dim=32, hidden=64, templates=16, base=True, wavelengths=None):
        super().__init__()
        self.vocab, self.wavelengths = tuple(vocab), wavelengths and tuple(wavelengths)
        # Bands named at evaluation that the vocabulary lacks, with their wavelengths (add_bands).
        self.extra = {}
        self.out_channels, self.kernel_size = out_channels, kernel_size
        self.stride, self.padding = stride, padding
        self.embed = nn.Embedding(len(vocab), embed_dim)
        self.fc1 = nn.Linear(2 * embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, templates)
        nn.init.normal_(self.embed.weight, std=1.0)
        if base:
            # A plain kernel per vocabulary channel, Kaiming-initialised for the full input, and
            # a hypernetwork that starts at zero: before training the stem is a plain convolution
            # on the full set and mean-fills the missing channels on a subset, and a trained RGB
            # stem can be loaded into ``base`` as it is.
            self.base = nn.Parameter(torch.randn(len(vocab), out_channels, kernel_size, kernel_size)
                                     * (2 / kernel_size ** 2 / len(vocab)) ** 0.5)
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
            template_std = (2 / kernel_size ** 2 / len(vocab) / templates) ** 0.5
        else:
            self.register_parameter("base", None)
            # Variance of a one-input-channel Kaiming init, split across the mixed templates.
            template_std = (2 / kernel_size ** 2 / templates) ** 0.5
        self.templates = nn.Parameter(
            torch.randn(templates, out_channels, kernel_size, kernel_size) * template_std)
        self._cache = {}
        self._selectors = {}
        self.register_load_state_dict_pre_hook(self._load_hook)

    def _load_hook(self, module, state, prefix, *args):
        """Drop cached kernels; take a plain stem's ``[out, V, k, k]`` weight as ``base``."""
        self._cache.clear()
        plain = state.pop(prefix + "conv.weight", None)
        if plain is not None and self.base is not None and prefix + "base" not in state:
            state[prefix + "base"] = plain.transpose(0, 1)

    def train(self, mode=True):
        self._cache.clear()
        return super().train(mode)

    def add_bands(self, wavelengths):
        """Let the stem take bands it never trained on, each known by its wavelength (``{name: nm}``):
        such a band's embedding and base kernel are interpolated between the two vocabulary
        bands nearest in wavelength (the nearest one beyond either end)."""
        if self.wavelengths is None:
            raise ValueError("this model's channels have no wavelengths, so it cannot take other bands")
        self.extra.update({k: float(v) for k, v in wavelengths.items() if k not in self.vocab})
        self._selectors.clear()
        self._cache.clear()

    def weights_of(self, channels):
        """``[n, V]``: each channel as a mix of vocabulary channels (one-hot for its own)."""
        rows = torch.zeros(len(channels), len(self.vocab))
        for i, c in enumerate(channels):
            if c in self.vocab:
                rows[i, self.vocab.index(c)] = 1
            elif c in self.extra:
                rows[i] = interpolation(self.wavelengths, self.extra[c])
            else:
                raise ValueError(f"channel {c!r} is not one of this model's ({', '.join(self.vocab)}) "
                                 "and has no wavelength it could be made from")
        return rows

    def selector(self, channels, device):
        """``([n, 2, V], [n, V])`` for this combination, built once since they depend on names only.

        The first: row i picks channel i's embedding and the mean embedding of the set (one
        matmul replaces index, mean, expand and cat). The second mixes ``base``: channel i's own
        kernel plus the missing channels' kernels shared equally among the present ones, which is
        what filling each missing channel with the mean of the present ones does to a plain conv.
        """
        key = (tuple(channels), device)
        if key not in self._selectors:
            n, own = len(channels), self.weights_of(channels)
            sel = torch.stack([own, own.sum(0).expand_as(own) * (1 / n)], 1)
            # A band made from its neighbours stands in for them as far as it is made of them.
            missing = (1 - own.sum(0)).clamp(min=0)
            self._selectors[key] = sel.to(device), (own + missing * (1 / n)).to(device)
        return self._selectors[key]

    def kernel(self, channels):
        """``[out, len(channels), k, k]`` kernel for these channels, in their order."""
        n, t = len(channels), self.templates
        sel, fill = self.selector(channels, t.device)
        inputs = (sel @ self.embed.weight).view(n, -1)
        hidden = F.gelu(F.linear(inputs, self.fc1.weight, self.fc1.bias), approximate="tanh")
        # Dividing the coefficients by n (folded into the matmul) keeps the stem's output scale
        # the same for 1, 2 or 3 channels.
        coef = torch.addmm(self.fc2.bias, hidden, self.fc2.weight.t(), beta=1 / n, alpha=1 / n)
        kernel = coef @ t.view(len(t), -1)
        if self.base is not None:
            kernel = kernel + fill @ self.base.view(len(self.vocab), -1)
        # Contiguous once here, or conv2d would copy the transposed view on every call.
        return kernel.view(n, *t.shape[1:]).transpose(0, 1).contiguous()

    def as_conv(self, channels):
        """An ordinary convolution equal to this stem on ``channels`` (deployment, export)."""
        return _conv_with(self.kernel(channels), self.stride, self.padding)

    def forward(self, x, channels):
        if x.shape[1] != len(channels):
            raise ValueError(f"input has {x.shape[1]} channels but {len(channels)} names")
        if self.training or torch.is_grad_enabled():
            weight = self.kernel(channels)
        else:  # cleared by train() and load_state_dict(), the ways weights change
            key = (tuple(channels), x.device)
            if key not in self._cache:
                self._cache[key] = self.kernel(channels)
            weight = self._cache[key]
        return F.conv2d(x, weight.to(x.dtype), stride=self.stride, padding=self.padding)


class SeedDWGStem(nn.Module):
    """The original's dynamic weight generator, batched: per-image channel means -> MLP -> kernel.

    Blind to channel names (the original was), so callers pad missing channels positionally.
    The per-image kernels run as one grouped convolution instead of the original's Python loop.
    """

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, in_channels=3, hidden=64):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = stride, padding
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_channels * in_channels * kernel_size ** 2))
        fan_in = in_channels * kernel_size ** 2
        nn.init.normal_(self.mlp[2].weight, std=(2 / fan_in) ** 0.5 / hidden ** 0.5)
        nn.init.normal_(self.mlp[2].bias, std=(2 / fan_in) ** 0.5)

    def kernels(self, x):
        k = self.kernel_size
        return self.mlp(x.mean((2, 3))).view(-1, self.out_channels, self.in_channels, k, k)

    def forward(self, x, channels=None):
        b, c, h, w = x.shape
        weight = self.kernels(x).reshape(b * self.out_channels, c, self.kernel_size, self.kernel_size)
        y = F.conv2d(x.reshape(1, b * c, h, w), weight, stride=self.stride, padding=self.padding,
                     groups=b)
        return y.view(b, self.out_channels, *y.shape[2:])

    def forward_reference(self, x):
        """The original's per-image loop; kept for the equivalence test and the benchmark."""
        weights = self.kernels(x)
        return torch.cat([F.conv2d(x[i:i + 1], weights[i], stride=self.stride, padding=self.padding)
                          for i in range(x.shape[0])])


class FilledStem(nn.Module):
    """A plain convolution over the full vocabulary; missing channels are filled in first.

    ``fill``: ``zero`` or ``mean`` (the mean of the present channels stands in for each
    missing one); channels are placed by name.
    """

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, vocab="RGB", fill="zero"):
        super().__init__()
        if fill not in ("zero", "mean"):
            raise ValueError(f"unknown fill {fill!r}")
        self.vocab, self.fill = tuple(vocab), fill
        self.conv = nn.Conv2d(len(vocab), out_channels, kernel_size, stride, padding, bias=False)

    def expand(self, x, channels):
        b, c, h, w = x.shape
        full = len(self.vocab)
        if tuple(channels) == tuple(self.vocab):
            return x
        base = x.mean(1, keepdim=True) if self.fill == "mean" else x.new_zeros(b, 1, h, w)
        out = base.expand(b, full, h, w).clone()
        out[:, [self.vocab.index(ch) for ch in channels]] = x
        return out

    def as_conv(self, channels):
        """An ordinary convolution over ``channels`` alone equal to this stem on them: a zero
        input adds nothing, a mean-filled one adds an equal share of its kernel to each present
        channel's."""
        w = self.conv.weight
        kernel = w[:, [self.vocab.index(c) for c in channels]]
        if self.fill == "mean":
            missing = [i for i, c in enumerate(self.vocab) if c not in channels]
            kernel = kernel + w[:, missing].sum(1, keepdim=True) / len(channels)
        return _conv_with(kernel, self.conv.stride, self.conv.padding)

    @torch.no_grad()
    def inherit_for(self, channels):
        """Adapt a pretrained kernel to a model that will only ever see ``channels``: a zero-filled
        stem given one channel takes the sum of the kernel's slices for it (timm's
        ``adapt_input_conv``: its response to that channel is the pretrained stem's to a grey image
        of it); with several, each keeps its own slice. A mean-filled stem already sums them."""
        if self.fill == "zero" and len(channels) == 1:
            self.conv.weight[:, self.vocab.index(channels[0])] = self.conv.weight.sum(1)

    def forward(self, x, channels):
        return self.conv(self.expand(x, channels))


def interpolation(wavelengths, wavelength):
    """``[V]`` weights that mix the bands of ``wavelengths`` into one at ``wavelength``: linear
    between its two neighbours, all on the nearest one beyond either end."""
    waves = torch.tensor(wavelengths, dtype=torch.float64)
    weights = torch.zeros(len(waves), dtype=torch.float64)
    below, above = waves <= wavelength, waves >= wavelength
    if not below.any() or not above.any():
        weights[(waves - wavelength).abs().argmin()] = 1
        return weights.float()
    lo = torch.where(below, waves, -torch.inf).argmax()
    hi = torch.where(above, waves, torch.inf).argmin()
    if lo == hi:
        weights[lo] = 1
    else:
        t = (wavelength - waves[lo]) / (waves[hi] - waves[lo])
        weights[lo], weights[hi] = 1 - t, t
    return weights.float()


@torch.no_grad()
def _conv_with(kernel, stride, padding):
    conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[2:], stride, padding, bias=False)
    conv.weight.copy_(kernel)
    return conv.to(kernel.device)
