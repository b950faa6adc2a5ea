"""DataLoaders whose order depends only on (seed, epoch), so a resumed run sees the same batches."""
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset


class SkipSampler(torch.utils.data.Sampler):
    """The indices of ``sampler`` without the first ``skip`` (resuming inside an epoch)."""

    def __init__(self, sampler, skip):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


def train_loader(dataset, batch_size, workers, seed, epoch, ctx, skip_batches=0):
    sampler = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    # Workers draw their augmentation seeds from this generator; the main process (workers=0)
    # from the global RNG, which the caller seeds per epoch.
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + ctx.rank)
    return DataLoader(dataset, batch_size, sampler=SkipSampler(sampler, skip_batches * batch_size),
                      num_workers=workers, drop_last=True, generator=gen,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=False)


def eval_loader(dataset, batch_size, workers, ctx):
    """This rank's shard (every world-th image); ``engine.evaluate`` gathers the shards."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world))
    return DataLoader(shard, batch_size, shuffle=False, num_workers=workers,
                      pin_memory=ctx.device.type == "cuda")
