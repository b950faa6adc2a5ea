"""DataLoaders built once per run (persistent workers), whose order and augmentations depend only
on (seed, epoch), so a resumed run sees the same batches, augmented the same way, even when it
resumes inside an epoch."""
import os

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset


def default_workers():
    """Loader processes per training process: the cores this process may use, shared with the
    other processes of the node under torchrun, one left for the training process itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1)


class EpochSampler(torch.utils.data.Sampler):
    """``(index, seed)`` pairs of one epoch, the first ``skip`` batches left out (a resume inside
    an epoch); ``seed`` is fixed by (run seed, epoch, rank, position in the epoch). Set the epoch
    with ``set_epoch`` before iterating."""

    def __init__(self, dataset, batch_size, seed, ctx):
        self.order = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.batch_size, self.seed, self.rank = batch_size, seed, ctx.rank
        self.set_epoch(0)

    def set_epoch(self, epoch, skip_batches=0):
        self.order.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size
        self.base = ((self.seed * 1_000_003 + epoch) * 1009 + self.rank) * 10_000_000

    def __iter__(self):
        order = list(self.order)
        return ((order[pos], self.base + pos) for pos in range(self.skip, len(order)))

    def __len__(self):
        return max(len(self.order) - self.skip, 0)


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


def train_loader(dataset, batch_size, workers, seed, ctx):
    """One loader for the whole run: call ``loader.sampler.set_epoch(epoch, skip)`` per epoch."""
    sampler = EpochSampler(dataset, batch_size, seed, ctx)
    return DataLoader(SeededSamples(dataset), batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                      # its own generator: building the loader draws nothing from the global RNG
                      generator=torch.Generator().manual_seed(seed))


def eval_loader(dataset, batch_size, workers, ctx):
    """This rank's shard (every world-th image); ``engine.evaluate`` gathers the shards."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world))
    return DataLoader(shard, batch_size, shuffle=False, num_workers=workers,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0)
