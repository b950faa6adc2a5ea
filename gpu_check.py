"""Exercise every CUDA path of the repository in a few minutes, and say which passed.

    python -m gpu_check [--data-root DIR] [--out runs/gpu_check]      (make gpu-check)

On a CUDA machine: trains `dwg` on DenseNet-121 at 224 px with --amp bf16 --channels-last, with
--amp fp16 (the gradient scaler steps), with --compile and with --decode device (nvjpeg);
compares nvjpeg's pixels with the workers' decoding; resumes one run and evaluates it on
every channel combination; trains and evaluates `shallow` and `resnet34`; runs a one-GPU
torchrun (NCCL) step; and measures training images/s of each model fed by the loader (JPEGs
decoded by the workers, then on the GPU) against the same model fed from a batch already on
the GPU. Prints one table (check, passed, figure)
and writes it as gpu_check.json and gpu_check.md under --out.

Without CUDA it says so in one line and exits 0. `--cpu-smoke` runs the same sequence on the
CPU at toy sizes (small backbone, 32 px; the CUDA flags are then ignored with a warning), so
that the script itself is tested where no GPU is.
"""
import argparse
import os
import subprocess
import sys
import time

import torch

import models
from data import build_dataset, describe_root
from data.loaders import default_workers, eval_loader, train_loader
from engine import Run, State, train_one_epoch
from flags import add_data_root, add_limit
from losses import LabelLoss
from utils.distributed import Context
from utils.errors import Parser, at_least, cli
from utils.report import write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    p = Parser(description=__doc__)
    add_data_root(p, "synthetic")
    p.add_argument("--out", default="runs/gpu_check")
    p.add_argument("--steps", type=at_least(1), default=24, help="training steps per run (about)")
    add_limit(p)
    p.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (tests the script)")
    return p.parse_args(argv)


class Checks:
    """Runs checks, each a command or a function, and keeps one row per check."""

    def __init__(self, out):
        self.rows, self.out = [], out

    def command(self, name, *cmd, figure=""):
        start = time.time()
        proc = subprocess.run([sys.executable, *cmd], cwd=HERE, capture_output=True, text=True)
        passed = proc.returncode == 0
        detail = figure if passed else (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
        self.add(name, passed, detail, time.time() - start)
        return passed

    def add(self, name, passed, figure, seconds):
        """``passed`` None: not exercised here (said so, neither passed nor failed)."""
        self.rows.append({"check": name, "passed": passed, "figure": figure, "seconds": round(seconds, 1)})
        print(f"{'skipped' if passed is None else 'passed' if passed else 'FAILED'}  {name}: {figure}", flush=True)


def throughput(backbone, model_name, spec, img_size, batch, steps, device, fed_by_loader, decode="workers"):
    """Training images/s of one model, fed by the loader (default workers, JPEGs decoded where
    ``decode`` says) or by one batch on the device."""
    torch.manual_seed(0)
    config = {"backbone": backbone} if models.registry.model_task(model_name) == 1 else {}
    model = models.create_model(model_name, len(spec.classes), **config).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ctx = Context(device=torch.device(device))
    dataset = build_dataset(spec, "train", img_size, train=True)
    if fed_by_loader:
        sampler_set = torch.utils.data.Subset(dataset, [i % len(dataset) for i in range(batch * steps)])
        loader = train_loader(sampler_set, batch, workers=default_workers(), seed=0, ctx=ctx, decode=decode)
    else:
        x, y = next(iter(torch.utils.data.DataLoader(dataset, batch, sampler=torch.utils.data.RandomSampler(
            dataset, replacement=True, num_samples=batch))))
        loader = [(x.to(device), y.to(device))] * steps
    run, state = Run(model, LabelLoss(), ctx=ctx), State(optimizer, scheduler)
    # warm-up: cuDNN autotuning, allocator
    train_one_epoch(run, state, loader[:2] if isinstance(loader, list) else [next(iter(loader))], 0)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.time()
    train_one_epoch(run, state, loader, 1)
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.time() - start)


def decoded_alike(spec, img_size, device, images=64):
    """(passed, figure): the evaluation batches of both decoding routes, pixel by pixel. Two JPEG
    decoders (nvjpeg, libjpeg-turbo) may round differently; the crops must be the same."""
    dataset = build_dataset(spec, "val", img_size, limit=images)
    ctx = Context(device=torch.device(device))
    pairs = [(a.to(device), b.to(device)) for (a, _), (b, _) in
             zip(eval_loader(dataset, 16, 0, ctx), eval_loader(dataset, 16, 0, ctx, decode="device"))]
    diff = torch.cat([(a.float() - b.float()).abs().flatten() for a, b in pairs])
    return bool(diff.mean() < 2), f"mean |difference| {diff.mean():.3f}, max {diff.max():.0f} (uint8 levels)"


@cli
def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu-check: no CUDA device here; nothing to check (skipped)")
        return 0
    setup = plan_checks(args)
    checks = Checks(args.out)
    check_task1(checks, args, setup)
    check_task2(checks, args, setup)
    check_throughput(checks, setup)
    name = torch.cuda.get_device_name() if setup.device == "cuda" else "CPU (smoke)"
    df = write_results(checks.rows, args.out, "gpu_check", f"gpu-check on {name}, torch {torch.__version__}")
    print(f"\ngpu-check on {name}\n{df.to_markdown(index=False)}\nwrote {args.out}/gpu_check.json and .md")
    return 1 if (df["passed"] == False).any() else 0  # noqa: E712 (None: skipped, not failed)


def plan_checks(args):
    """The device, the sizes and the flags every checked run shares."""
    smoke = args.cpu_smoke
    setup = argparse.Namespace(smoke=smoke, device="cpu" if smoke else "cuda", runs=os.path.join(args.out, "runs"),
                               limit=["--limit", str(args.limit)] if args.limit else [])
    setup.backbone, setup.img, batch = ("small", 32, 8) if smoke else ("densenet121", 224, 8)
    setup.spec = describe_root(args.data_root)
    train_images = len(build_dataset(setup.spec, "train", setup.img, limit=args.limit))
    setup.epochs = max(1, round(args.steps / max(1, train_images // batch)))
    setup.steps = f"{setup.epochs * (train_images // batch)} steps"
    setup.common = ["--data-root", args.data_root, "--img-size", str(setup.img), "--batch-size", str(batch),
                    "--epochs", str(setup.epochs), "--device", setup.device, "--overwrite", *setup.limit]
    return setup


def check_task1(checks, args, setup):
    """dwg trained with each GPU-only path, resumed, decoded on the device, evaluated; torchrun."""
    smoke, runs, device = setup.smoke, setup.runs, setup.device
    if smoke:  # the CPU runs take these flags and ignore them: what they would check is not checked
        for what in ("bf16 autocast and channels-last", "fp16 with the gradient scaler", "NCCL", "nvjpeg decoding"):
            checks.add(what, None, "skipped on CPU (the run below takes the flag and ignores it)", 0.0)
    ignored = "flags accepted, ignored on CPU"
    for name, flags, on_cpu in [("dwg bf16 channels-last", ["--amp", "bf16", "--channels-last"], ignored),
                                ("dwg fp16 (grad scaler)", ["--amp", "fp16"], ignored),
                                # inductor's C++ build takes minutes on a CPU: the smoke compiles
                                # through dynamo and AOTAutograd, without the code generation
                                ("dwg compile", ["--compile", *(["--compile-backend", "aot_eager"] if smoke else [])],
                                 "aot_eager backend on CPU"),
                                ("dwg decode-on-device", ["--decode", "device"], None)]:
        checks.command(f"train {name}" + (f" ({on_cpu})" if smoke and on_cpu else ""),
                       "train_dw.py", "--model", "dwg", "--backbone", setup.backbone, *setup.common,
                       *flags, "--out", os.path.join(runs, name.split()[1]),
                       figure=f"{setup.backbone}, {setup.img}px, {setup.steps}")
    fp16 = os.path.join(runs, "fp16")
    checks.command("resume dwg fp16 for one more epoch", "train_dw.py", "--resume", fp16, "--epochs",
                   str(setup.epochs + 1), "--device", device, figure=f"to epoch {setup.epochs + 1}")
    start = time.time()
    try:
        checks.add("decode on the device against the workers", *decoded_alike(setup.spec, setup.img, device),
                   time.time() - start)
    except Exception as exc:
        checks.add("decode on the device against the workers", False, f"{type(exc).__name__}: {exc}".splitlines()[0],
                   time.time() - start)
    checks.command("evaluate dwg on every combination", "test_dw.py", "--checkpoint", os.path.join(fp16, "best.pt"),
                   "--data-root", args.data_root, "--device", device, "--out", os.path.join(fp16, "eval"),
                   *setup.limit, figure="RGB, RG, RB, GB, R, G, B")
    checks.command("torchrun, 1 process (NCCL)" if not smoke else "torchrun, 1 process (gloo)",
                   "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train_dw.py",
                   "--model", "dwg", "--backbone", setup.backbone, *setup.common, "--epochs", "1",
                   "--out", os.path.join(runs, "ddp"), figure="one epoch under DistributedDataParallel")


def check_task2(checks, args, setup):
    """shallow and resnet34 trained in bf16, then compared by test_rrdb.py."""
    task2 = []
    for model in ("shallow", "resnet34"):
        out = os.path.join(setup.runs, model)
        if checks.command(f"train {model} bf16", "train_rrdb.py", "--model", model, *setup.common, "--amp", "bf16",
                          "--out", out, figure=setup.steps):
            task2.append(os.path.join(out, "best.pt"))
    if len(task2) == 2:
        checks.command("evaluate shallow against resnet34", "test_rrdb.py", "--checkpoints", *task2,
                       "--data-root", args.data_root, "--device", setup.device, "--out",
                       os.path.join(setup.runs, "task2"), *setup.limit, figure="deployed shallow, ratio to resnet34")


def check_throughput(checks, setup):
    """Images a second fed by the loader (decoded by workers or on the device) against the model's pace."""
    for model_name in ("dwg", "resnet34", "shallow"):
        start = time.time()
        try:
            size = (64, 20) if not setup.smoke else (4, 1)  # on the CPU: the path, not the pace
            fed, fed_device, resident = (throughput(setup.backbone, model_name, setup.spec, setup.img, *size,
                                                    setup.device, *how)
                                         for how in [(True, "workers"), (True, "device"), (False,)])
            checks.add(f"images/s {model_name}: loader (workers decode), loader (device decodes), batch on device",
                       True, f"{fed:.0f}, {fed_device:.0f} vs {resident:.0f} ({fed / resident:.0%}, "
                       f"{fed_device / resident:.0%} of the model's pace)", time.time() - start)
        except Exception as exc:  # a failure here is a finding to report, not a crash
            checks.add(f"images/s {model_name}", False, f"{type(exc).__name__}: {exc}".splitlines()[0],
                       time.time() - start)


if __name__ == "__main__":
    sys.exit(main())
