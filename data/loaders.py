"""DataLoaders built once per run (persistent workers), whose order and augmentations depend only
on (seed, epoch), so a resumed run sees the same batches, augmented the same way, even when it
resumes inside an epoch."""
import atexit
import functools
import multiprocessing
import os
import signal

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.io import ImageReadMode, decode_jpeg

from data.datasets import decode_image

DECODE = ("workers", "device")
DECODE_HELP = ("where JPEGs are decoded: 'workers' (the loader processes, on the CPU) or 'device' (the "
               "training device, in batches: nvjpeg on CUDA; crop, resize and flip follow there, under "
               "the same per-image seeds)")


def ignore_stop_signals(_worker_id=None):
    """Loader workers leave SIGINT/SIGTERM to the training process: a signal sent to the whole
    process group (Ctrl-C, ``timeout``, a cluster's scheduler) would otherwise kill them mid-epoch
    and the training process with them, before it can finish its step and save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@atexit.register  # runs before multiprocessing's own exit hook, which atexit registered earlier
def _kill_workers_at_exit():
    """Workers ignore SIGTERM, so the terminate-and-join multiprocessing gives its daemon children
    at exit would wait forever for workers still alive (an error raised with persistent workers up).
    SIGCHLD goes back to its default first: torch's handler would report each kill as a failure."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


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
        self.epoch_order = list(self.order)
        self.skip = skip_batches * self.batch_size
        self.base = ((self.seed * 1_000_003 + epoch) * 1009 + self.rank) * 10_000_000

    def __iter__(self):
        order = self.epoch_order
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


class EncodedSamples(Dataset):
    """``--decode device``: each image as it is before decoding (``encoded`` of the dataset under
    any ``Subset``), with the seed of its augmentation (None in evaluation), for ``EncodedBatch``
    to finish on the device."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        dataset, index = _unwrap(self.dataset, index)
        data, label, path = dataset.encoded(index)
        # numpy, not a tensor: a batch of many small tensors would cost a shared-memory file
        # descriptor each on its way out of a worker
        return data.numpy(), seed, path, label

    @property
    def transform(self):
        return _unwrap(self.dataset)[0].transform


def _unwrap(dataset, index=None):
    """The dataset under any ``Subset``s, and ``index`` translated into it."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, None if index is None else dataset.indices[index]
    return dataset, index


class EncodedBatch:
    """A batch whose ``to(device)`` decodes it there (one batched ``decode_jpeg`` call: nvjpeg on
    CUDA) and crops, resizes and flips each image under its own seed, as ``SeededSamples`` does in
    the workers: the same draws, so on the CPU the same pixels, and on CUDA the same crops of
    nvjpeg's decoding. A batch nvjpeg refuses is decoded on the CPU, image by image."""

    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def to(self, device, non_blocking=False):
        jpegs = [torch.from_numpy(data) for data, *_ in self.items if data.ndim == 1]
        try:
            decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device) if jpegs else []
        except RuntimeError:
            decoded = [decode_image(path).to(device) for data, _, path in self.items if data.ndim == 1]
        decoded, images = iter(decoded), []
        for data, seed, _ in self.items:
            image = next(decoded) if data.ndim == 1 else torch.from_numpy(data).to(device, non_blocking=non_blocking)
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                images.append(self.transform(image))
        return torch.stack(images)


def collate_encoded(transform, samples):
    return EncodedBatch([s[:3] for s in samples], transform), torch.tensor([s[3] for s in samples])


def _source(dataset, decode):
    """The dataset a loader reads, and its collate function, for ``decode`` in ``DECODE``."""
    if decode == "workers":
        return dataset, None
    encoded = EncodedSamples(dataset)
    return encoded, functools.partial(collate_encoded, encoded.transform)


def train_loader(dataset, batch_size, workers, seed, ctx, decode="workers"):
    """One loader for the whole run: call ``loader.sampler.set_epoch(epoch, skip)`` per epoch."""
    sampler = EpochSampler(dataset, batch_size, seed, ctx)
    source, collate = _source(dataset, decode)
    return DataLoader(source if collate else SeededSamples(source), batch_size, sampler=sampler,
                      num_workers=workers, drop_last=True, collate_fn=collate,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=ignore_stop_signals,
                      # its own generator: building the loader draws nothing from the global RNG
                      generator=torch.Generator().manual_seed(seed))


def eval_loader(dataset, batch_size, workers, ctx, decode="workers"):
    """This rank's shard (every world-th image); ``engine.evaluate`` gathers the shards."""
    source, collate = _source(dataset, decode)
    shard = Subset(source, range(ctx.rank, len(dataset), ctx.world))
    return DataLoader(shard, batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=ignore_stop_signals)
