"""DataLoaders whose order and augmentations depend only on (seed, epoch), so a resumed run
sees the same batches, augmented the same way, even when it resumes inside an epoch."""
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset


class SeededSampler(torch.utils.data.Sampler):
    """``(index, seed)`` for the indices of ``sampler`` after the first ``skip`` (resuming inside
    an epoch); ``seed`` is ``base`` plus the position in the epoch."""

    def __init__(self, sampler, skip, base):
        self.sampler, self.skip, self.base = sampler, skip, base

    def __iter__(self):
        order = list(self.sampler)
        return ((order[pos], self.base + pos) for pos in range(self.skip, len(order)))

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


class SeededSamples(Dataset):
    """Each image augmented under its own seed: the result does not depend on which worker loads
    it, nor on how many images that worker loaded before (skipped batches, a resume)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):  # the caller's RNG (workers=0: training's) untouched
            torch.manual_seed(seed)
            return self.dataset[index]


def train_loader(dataset, batch_size, workers, seed, epoch, ctx, skip_batches=0):
    sampler = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    base = ((seed * 1_000_003 + epoch) * 1009 + ctx.rank) * 10_000_000
    # A generator of its own, so that building the loader draws nothing from the global RNG.
    gen = torch.Generator().manual_seed(base)
    return DataLoader(SeededSamples(dataset), batch_size,
                      sampler=SeededSampler(sampler, skip_batches * batch_size, base), num_workers=workers, drop_last=True, generator=gen,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=False)


def eval_loader(dataset, batch_size, workers, ctx):
    """This rank's shard (every world-th image); ``engine.evaluate`` gathers the shards."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world))
    return DataLoader(shard, batch_size, shuffle=False, num_workers=workers,
                      pin_memory=ctx.device.type == "cuda")
