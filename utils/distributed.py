"""torchrun / DistributedDataParallel plumbing. A plain ``python`` run is world size 1."""
import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0


def init(device_flag="auto"):
    """Set up the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    use_cuda = resolve_device(device_flag) == "cuda"
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        atexit.register(shutdown)
    return Context(rank, world, device)


def gather_objects(obj, ctx):
    """Every rank's ``obj`` as a list, in rank order (a one-element list when not distributed)."""
    if ctx.world == 1:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx):
    if ctx.world > 1:
        dist.barrier()


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(flag):
    """``--device`` as written -> "cuda" or "cpu" ("auto": CUDA when there is one)."""
    if flag == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this machine has no CUDA device torch can use (--device cpu or auto)")
    return "cuda" if flag == "cuda" or (flag == "auto" and torch.cuda.is_available()) else "cpu"


def device_name(device):
    """A device as the bench records it and the result driver's plan matches it: 'cpu', or
    'cuda: ' and the GPU's name."""
    return f"cuda: {torch.cuda.get_device_name()}" if torch.device(device).type == "cuda" else "cpu"
