"""Training criteria as objects, so that one loop (``engine.train_one_epoch``) serves them all.

A criterion is called as ``criterion(forward, x, names, y)``, where ``forward(x, names)`` runs
the model (under autocast) and returns float logits; ``forward(x, names, sync=False)`` marks a
pass that is not the step's last (no gradient all-reduce after it under DDP). It yields
``(loss, logits)`` once per forward pass; the loop back-propagates each loss before asking for
the next, so several passes (the sandwich) add their gradients without holding several graphs at
once. A pass that holds several losses (the packed sandwich) yields ``(loss, logits, parts)``,
``parts`` the values of its label loss and of what the other views add. The first logits
yielded are those the loop scores for training accuracy: the batch as given, or the one
combination a step between sandwiches trains.
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

    Every step trains the full channel set on the labels, then ``subsets`` reduced combinations
    towards the full set's detached soft output: the first always a single channel, the others
    drawn by hierarchical sampling (a size from 1 to V-1, then which channels). With
    ``all_singles`` the first is every single channel instead, one pass each: the sandwich
    rule's "smallest network every step", where there are V smallest ones. Each reduced batch
    is cut from the full one on whatever device it is on; the gradients of all passes add up
    into one optimizer step.

    Three ways to make the reduced passes cheaper, each measured in docs/task1.md:

    * ``fraction``: reduced pass i takes ``m = round(fraction * B)`` images of the batch, the
      i-th run of m in the batch's (shuffled) order, wrapping around, so that the passes of a
      step see different images.
    * ``scale``: reduced passes see the images resized to ``scale`` of their side (bilinear,
      antialiased); the stem and body take any size.
    * ``every``: every ``every``-th step is a sandwich (the first among them); the other steps
      make one pass on a hierarchically sampled combination (the full set among them) on the
      labels. ``steps`` counts the steps taken; a resumed run sets it to the steps it has done.

    Passes name whether they end the step (``forward(x, names, sync=...)``): under
    DistributedDataParallel only the last one all-reduces the gradients of all of them.
    """

    def __init__(self, base, subsets=2, generator=None, all_singles=False, fraction=1.0, scale=1.0, every=1,
                 packed=False, start=0, stored=None):
        if subsets < 1:
            raise ValueError("the sandwich needs at least one reduced combination")
        if not (0 < fraction <= 1 and 0 < scale <= 1 and every >= 1 and start >= 0):
            raise ValueError(f"fraction and scale must be in (0, 1], every at least 1 and start at least 0, "
                             f"got {fraction}, {scale}, {every}, {start}")
        if packed and scale < 1:
            raise ValueError("a packed sandwich runs every view in one batch: the reduced views need the full "
                             "side (scale 1)")
        self.base, self.subsets, self.generator, self.all_singles = base, subsets, generator, all_singles
        self.fraction, self.scale, self.every, self.packed, self.start = fraction, scale, every, packed, start
        self.stored, self.indices = stored, None
        self.single_prob = None  # the steps between sandwiches draw as sample_subset's single_prob says
        self.steps = 0

    @property
    def wants_indices(self):
        return self.stored is not None

    def see_batch(self, indices):
        """The dataset indices of the next batch (the loop tells), for the stored targets."""
        self.indices = indices

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

    def rows(self, i, batch):
        """Images of reduced pass ``i`` (all of them unless ``fraction`` < 1)."""
        if self.fraction == 1:
            return None
        m = max(1, round(self.fraction * batch))
        return (torch.arange(m) + i * m) % batch

    def reduce(self, x, keep, rows):
        x = x.index_select(1, torch.tensor(keep, device=x.device))
        if rows is not None:
            x = x.index_select(0, rows.to(x.device))
        if self.scale < 1:
            size = [max(1, round(self.scale * s)) for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def __call__(self, forward, x, names, y):
        self.steps += 1
        if self.steps <= self.start:  # delayed subsets: the full set alone, on the labels
            yield from self.base(forward, x, names, y)
            return
        if (self.steps - 1 - self.start) % self.every:
            yield self.subset_step(forward, x, names, y)
            return
        if self.packed:
            yield self.packed_step(forward, x, names, y)
            return
        forward_full = functools.partial(forward, sync=False)
        (loss, logits), = self.base(forward_full, x, names, y)
        yield loss, logits
        target = F.softmax(logits.detach(), 1)
        self.remember(target)
        draws = self.draw(names)
        for i, keep in enumerate(draws):
            rows = self.rows(i, len(x))
            out = forward(self.reduce(x, keep, rows), tuple(names[j] for j in keep), sync=i == len(draws) - 1)
            yield soft_cross_entropy(out, target if rows is None else target[rows.to(target.device)]), None

    def packed_step(self, forward, x, names, y):
        """The sandwich in one forward and one backward: the reduced views of the same images are
        appended to the full batch (``ChannelClassifier.forward_packed``), their target that same
        forward's detached full-set output; -> ``(loss, full-set logits, [label loss, distillation])``."""
        draws = self.draw(names)
        rows = [self.rows(i, len(x)) for i in range(len(draws))]
        views = [self.reduce(x, keep, r) for keep, r in zip(draws, rows)]
        logits = forward([x, *views], [tuple(names), *[tuple(names[j] for j in keep) for keep in draws]])
        full, *outs = logits.split([len(x), *[len(v) for v in views]])
        (label_loss, _), = self.base(lambda *_, **__: full, x, names, y)
        target = F.softmax(full.detach(), 1)
        self.remember(target)
        distill = sum(soft_cross_entropy(out, target if r is None else target[r.to(target.device)])
                      for out, r in zip(outs, rows))
        return label_loss + distill, full, [label_loss.item(), distill.item()]

    def subset_step(self, forward, x, names, y):
        """A step between sandwiches: one sampled combination on the labels, plus, with stored
        targets, towards each image's latest full-set prediction where there is one; a full-set
        draw refreshes them. -> ``(loss, logits[, parts])``."""
        full = tuple(names)
        x, names = sample_subset(x, names, self.generator, single_prob=self.single_prob)
        (loss, logits), = self.base(forward, x, names, y)
        if self.stored is None:
            return loss, logits
        if names == full:
            self.remember(F.softmax(logits.detach(), 1))
            return loss, logits
        target, known = self.stored.get(self.indices)
        if not known.any():
            return loss, logits, [loss.item(), 0.0]
        distill = soft_cross_entropy(logits[known], target[known].to(logits.dtype))
        return loss + distill, logits, [loss.item(), distill.item()]

    def remember(self, probs):
        if self.stored is not None and self.indices is not None:
            self.stored.put(self.indices, probs)


class StoredTargets:
    """Each training image's latest full-set class probabilities, by dataset index (progressive
    self-knowledge distillation's stored predictions): a target for its reduced views on steps
    that make no full-set pass. Half precision, on the training device; ``state_dict`` goes into
    the checkpoint. Under several processes each keeps what its own shards have seen."""

    def __init__(self, images, classes, device="cpu"):
        self.probs = torch.zeros(images, classes, dtype=torch.float16, device=device)
        self.known = torch.zeros(images, dtype=torch.bool, device=device)

    def put(self, indices, probs):
        indices = indices.to(self.probs.device)
        self.probs[indices] = probs.to(self.probs)
        self.known[indices] = True

    def get(self, indices):
        indices = indices.to(self.probs.device)
        return self.probs[indices], self.known[indices]

    def state_dict(self):
        return {"probs": self.probs, "known": self.known}

    def load_state_dict(self, state):
        if state["probs"].shape != self.probs.shape:
            raise ValueError(f"stored targets for {tuple(state['probs'].shape)} images x classes, "
                             f"not {tuple(self.probs.shape)}")
        self.probs.copy_(state["probs"])
        self.known.copy_(state["known"])

