"""Training criteria as objects, so that one loop (``engine.train_one_epoch``) serves them all.

A criterion is called as ``criterion(forward, x, names, y)``, where ``forward(x, names)`` runs
the model (under autocast) and returns float logits; ``forward(x, names, sync=False)`` marks a
pass that is not the step's last (no gradient all-reduce after it under DDP). It yields
``(loss, logits)`` once per forward pass; the loop back-propagates each loss before asking for
the next, so several passes (the sandwich) add their gradients without holding several graphs at
once. The first logits yielded are those the loop scores for training accuracy: the batch as
given, or the one combination a step between sandwiches trains. A criterion with a
``state_dict`` (the sandwich's step count) has it saved in the checkpoint and restored on resume.
"""
import functools

import torch
import torch.nn.functional as F

from data.channels import sample_subset


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

    A sandwich step trains the full channel set on the labels, then ``subsets`` reduced
    combinations towards the full set's detached soft output: the first always a single channel,
    the others drawn by hierarchical sampling (a size from 1 to V-1, then which channels). Every
    ``every``-th step is a sandwich (the first among them); the steps between make one pass on a
    combination ``sample_subset`` draws (a single channel with probability ``single_prob``) on the
    labels. Reduced pass i of a sandwich takes ``round(fraction * B)`` images of the batch, the
    i-th run of them in the batch's (shuffled) order, wrapping around, so that the passes of a step
    see different images. The gradients of all passes add up into one optimizer step; under
    DistributedDataParallel only the last pass all-reduces (``forward(x, names, sync=...)``).
    """

    def __init__(self, base, subsets=2, generator=None, fraction=1.0, every=1, single_prob=None):
        if subsets < 1 or not 0 < fraction <= 1 or every < 1:
            raise ValueError(f"the sandwich needs subsets >= 1, fraction in (0, 1] and every >= 1, got {subsets}, "
                             f"{fraction}, {every}")
        self.base, self.generator, self.subsets = base, generator, subsets
        self.fraction, self.every, self.single_prob = fraction, every, single_prob
        self.steps = 0  # calls so far (one a micro-batch): which of them are sandwiches

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        if not isinstance(state.get("steps"), int) or state["steps"] < 0:
            raise ValueError(f"the sandwich's step count must be a whole number, got {state.get('steps')!r}")
        self.steps = state["steps"]

    def draw(self, names):
        """Channel positions of the reduced combinations for one step, in vocabulary order."""
        n, draws = len(names), []
        for i in range(self.subsets):
            k = 1 if i == 0 else int(torch.randint(1, n, (1,), generator=self.generator))
            draws.append(sorted(torch.randperm(n, generator=self.generator)[:k].tolist()))
        return draws

    def rows(self, i, batch):
        """Images of reduced pass ``i`` (all of them unless ``fraction`` < 1)."""
        if self.fraction == 1:
            return None
        m = max(1, round(self.fraction * batch))
        return (torch.arange(m) + i * m) % batch

    def __call__(self, forward, x, names, y):
        self.steps += 1
        if (self.steps - 1) % self.every:
            x, names = sample_subset(x, names, self.generator, single_prob=self.single_prob)
            yield from self.base(forward, x, names, y)
            return
        (loss, logits), = self.base(functools.partial(forward, sync=False), x, names, y)
        yield loss, logits
        target = F.softmax(logits.detach(), 1)
        draws = self.draw(names)
        for i, keep in enumerate(draws):
            rows = self.rows(i, len(x))
            reduced, part = x.index_select(1, torch.tensor(keep, device=x.device)), target
            if rows is not None:
                reduced, part = reduced.index_select(0, rows.to(x.device)), target[rows.to(target.device)]
            out = forward(reduced, tuple(names[j] for j in keep), sync=i == len(draws) - 1)
            yield soft_cross_entropy(out, part), None
