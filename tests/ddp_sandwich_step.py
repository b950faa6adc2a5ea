"""One sandwich step under torchrun (gloo): counts gradient all-reduces and saves the weights.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_sandwich_step.py OUT [--sync-every-pass]
                                                                                               [--accumulate]

Each rank trains on its half of a fixed batch; ``--sync-every-pass`` ignores the passes' ``sync``
(every backward all-reduces), to show that the count can fail; ``--accumulate`` makes the two
batches micro-batches of one optimizer step. Rank 0 writes OUT; ``one_process_weights`` is what it must equal.
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
from engine import Run, State, train_one_epoch  # noqa: E402
from losses import LabelLoss, SandwichLoss  # noqa: E402
from utils.distributed import Context  # noqa: E402


def batch(steps=2, size=8):
    """The whole batches every test process agrees on (uint8 images, labels)."""
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 256, (size, 3, 16, 16), dtype=torch.uint8, generator=gen),
             torch.randint(0, 4, (size,), generator=gen)) for _ in range(steps)]


def tiny_model():
    torch.manual_seed(0)
    model = models.create_model("dwg", 4, backbone="small")
    with torch.no_grad():
        model.stem.fc2.weight.normal_(0, 0.3)
    return model


def criterion():
    return SandwichLoss(LabelLoss(0.1), 2, torch.Generator().manual_seed(5), fraction=0.5)


def one_process_weights():
    """The weights after the same steps in one process, averaging the two shards' gradients (each
    shard drawn with its own generator of the same seed, as each rank does)."""
    from data.datasets import normalize
    model = tiny_model().train()
    crits = [criterion(), criterion()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for u8, y in batch():
        grads = []
        for crit, xs, ys in zip(crits, normalize(u8).chunk(2), y.chunk(2)):
            opt.zero_grad()
            for loss, _ in crit(lambda x, names, sync=True: model(x, names), xs, tuple("RGB"), ys):
                loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        for n, p in model.named_parameters():
            p.grad = (grads[0][n] + grads[1][n]) / 2
        opt.step()
    return {n: p.detach() for n, p in model.named_parameters()}


def main(out, sync_every_pass=False, accumulate=False):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ddp = torch.nn.parallel.DistributedDataParallel(tiny_model(), bucket_cap_mb=1000)
    rounds = []

    def counting_hook(state, bucket):
        if bucket.index() == 0:  # one all-reduce round touches bucket 0 once
            rounds.append(1)
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)
    if sync_every_pass:
        ddp.no_sync = None  # the loop then never silences a pass
    opt = torch.optim.SGD(ddp.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    shards = [(x.chunk(world)[rank], y.chunk(world)[rank]) for x, y in batch()]
    budget = argparse.Namespace(epochs=1, accum_steps=2 if accumulate else 1)
    run = Run(ddp.module, criterion(), budget, Context(rank, world), net=ddp)
    train_one_epoch(run, State(opt, sched), shards, 1)
    if rank == 0:
        torch.save({"rounds": len(rounds), "state_dict": ddp.module.state_dict()}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], "--sync-every-pass" in sys.argv, "--accumulate" in sys.argv)
