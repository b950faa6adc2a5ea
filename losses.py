"""Training criteria as objects, so that one loop (``engine.train_one_epoch``) serves them all.

A criterion is called as ``criterion(forward, x, names, y)``, where ``forward(x, names)`` runs
the model (under autocast) and returns float logits. It yields ``(loss, logits)`` once per
forward pass; the loop back-propagates each loss before asking for the next, so several passes
(the sandwich) add their gradients without holding several graphs at once. The first logits
yielded are those of the batch as given, which the loop scores for training accuracy.
"""
import torch
import torch.nn.functional as F


def soft_cross_entropy(logits, target_probs):
    """Cross-entropy against a distribution (in-place distillation's loss; KL up to a constant)."""
    return -(target_probs * F.log_softmax(logits, 1)).sum(1).mean()


class LabelLoss:
    """Cross-entropy with label smoothing: one pass."""

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, forward, x, names, y):
        logits = forward(x, names)
        yield F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits


class DistillationLoss:
    """Hinton et al.: ``alpha`` of the loss is the KL divergence to a frozen teacher's outputs
    softened at ``temperature``, the rest the label loss."""

    def __init__(self, base, teacher, alpha=0.5, temperature=4.0):
        self.base, self.teacher, self.alpha, self.temperature = base, teacher, alpha, temperature

    def __call__(self, forward, x, names, y):
        (loss, logits), = self.base(forward, x, names, y)
        t = self.temperature
        with torch.no_grad():
            target = F.log_softmax(self.teacher(x, names).float() / t, 1)
        kd = F.kl_div(F.log_softmax(logits / t, 1), target, log_target=True, reduction="batchmean") * t ** 2
        yield (1 - self.alpha) * loss + self.alpha * kd, logits


class SandwichLoss:
    """Sandwich training with in-place distillation (Yu and Huang, universally slimmable networks),
    over channel combinations instead of widths.

    Every step trains the full channel set on the labels, then ``subsets`` reduced combinations
    towards the full set's detached soft output: the first always a single channel, the others
    drawn by hierarchical sampling (a size from 1 to V-1, then which channels). With
    ``all_singles`` the first is every single channel instead, one pass each: the sandwich
    rule's "smallest network every step", where there are V smallest ones. Each reduced batch
    is cut from the full one on whatever device it is on; the gradients of all passes add up
    into one optimizer step.
    """

    def __init__(self, base, subsets=2, generator=None, all_singles=False):
        if subsets < 1:
            raise ValueError("the sandwich needs at least one reduced combination")
        self.base, self.subsets, self.generator, self.all_singles = base, subsets, generator, all_singles

    def draw(self, names):
        """Channel positions of the reduced combinations for one step, in vocabulary order."""
        n = len(names)
        draws = [[i] for i in range(n)] if self.all_singles else []
        for i in range(self.subsets):
            if i == 0 and self.all_singles:
                continue
            k = 1 if i == 0 else int(torch.randint(1, n, (1,), generator=self.generator))
            draws.append(sorted(torch.randperm(n, generator=self.generator)[:k].tolist()))
        return draws

    def __call__(self, forward, x, names, y):
        (loss, logits), = self.base(forward, x, names, y)
        yield loss, logits
        target = F.softmax(logits.detach(), 1)
        for keep in self.draw(names):
            index = torch.tensor(keep, device=x.device)
            yield soft_cross_entropy(forward(x.index_select(1, index), tuple(names[i] for i in keep)),
                                     target), None
