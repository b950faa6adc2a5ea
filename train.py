"""The training run behind ``train_dw.py`` and ``train_rrdb.py``: flags, data, checkpoints, resume.

Single process: ``python train_dw.py ...``; several GPUs: ``torchrun --nproc_per_node N train_dw.py ...``.
"""
import argparse
import csv
import datetime
import functools
import json
import math
import os
import random
import signal
import sys
import time
import warnings

import numpy as np
import torch

import models
from models import deploy
from models.norm import ComboBatchNorm2d
from data import build_dataset, describe_root, parse_combo, parse_combo_list
from data.channels import AUGMENTATIONS
from data.loaders import eval_loader, train_loader
from engine import StopRequest, evaluate, train_one_epoch
from utils import distributed
from losses import DistillationLoss, LabelLoss, SandwichLoss
from utils.checkpoint import check_classes, init_from, load_checkpoint, load_model, save_atomic
from utils.errors import UserError
from utils.metrics import classification_metrics
from utils.progress import Progress
from utils.report import training_curves

RUN_FILES = ("last.pt", "best.pt", "log.csv")


def build_parser(description, default_model, val_combos):
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help=f"default {default_model}; one of: {', '.join(models.list_models())}")
    p.add_argument("--backbone", default="densenet121", help="body for Task 1 models: densenet121|resnet18|small")
    p.add_argument("--pretrained", default=None,
                   help="'imagenet' (torchvision's weights, cached under $TORCH_HOME) or a local "
                        "torchvision state dict, for the body and the stem")
    p.add_argument("--init-from", default=None, help="start from the weights of one of our checkpoints "
                                                     "(e.g. a plain_zero run for a dwg)")
    p.add_argument("--stem-base", action=argparse.BooleanOptionalAction, default=None,
                   help="dwg: a plain kernel per channel under the hypernetwork (default: the model's)")
    p.add_argument("--combo-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm statistics per channel set (default: the model's)")
    p.add_argument("--combo-affine", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm scale and shift per channel set as well (implies --combo-bn)")
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "."),
                   help="folder with train/val/test.txt and images/ ($DATA_ROOT), or 'synthetic'")
    p.add_argument("--limit", type=int, default=None, help="use this many images per split (evenly spaced)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--channel-aug", default=None, choices=["none", "shuffle", "subset", "dropout", "sandwich"],
                   help="channel augmentation (default: the model's own); sandwich: every step trains "
                        "the full set on labels and --sandwich-subsets reduced sets towards it")
    p.add_argument("--sandwich-subsets", type=int, default=2,
                   help="reduced combinations per sandwich step (the first a single channel)")
    p.add_argument("--full-prob", type=float, default=0.0,
                   help="subset augmentation: probability that a batch keeps every channel")
    p.add_argument("--train-channels", default=None, help="train on this fixed combination only, e.g. R")
    p.add_argument("--val-combos", default=val_combos, help="model selection uses their mean val accuracy")
    p.add_argument("--teacher", default=None, help="checkpoint to distil from (e.g. our own ResNet34)")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation loss")
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="run folder (default runs/<model>)")
    p.add_argument("--resume", default=None, help="run folder or checkpoint to continue")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a folder holding another run")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="CUDA only")
    p.add_argument("--channels-last", action="store_true", help="CUDA only")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume)")
    p.add_argument("--log-every", type=int, default=50, help="a progress line every N steps (and at epoch end)")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard scalars under <out>/tensorboard")
    return p


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state():
    """RNG states in plain types and tensors only, so that checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
            "torch": torch.get_rng_state()}


def check_out_dir(out, resuming, overwrite):
    existing = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if existing and not resuming and not overwrite:
        raise UserError(f"{out} already holds a run ({', '.join(existing)}); "
                        "pass --resume to continue it, --overwrite to replace it, or another --out")
    os.makedirs(out, exist_ok=True)


def model_config(args):
    if models.registry.model_task(args.model) != 1:
        return {}
    options = {"base": args.stem_base, "combo_bn": args.combo_bn, "combo_affine": args.combo_affine}
    return {"backbone": args.backbone, "pretrained": args.pretrained,
            **{k: v for k, v in options.items() if v is not None}}


def lr_lambda(total_steps, warmup_steps):
    def f(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(total_steps - warmup_steps, 1)))
    return f


def start_log(path, header, epochs_done):
    """A fresh log, or the old one cut back to the epochs the resumed checkpoint holds (a kill
    between the log line and the checkpoint would otherwise leave a row twice)."""
    rows = []
    if epochs_done and os.path.exists(path):
        with open(path, newline="") as f:
            rows = [r for r in list(csv.reader(f))[1:] if int(r[0]) <= epochs_done]
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    os.replace(tmp, path)


def amp_settings(args, ctx):
    if ctx.device.type != "cuda":
        for flag, on in (("--amp", args.amp != "off"), ("--channels-last", args.channels_last),
                         ("--compile", args.compile)):
            if on:
                warnings.warn(f"{flag} is ignored on CPU")
        return None, None
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    return dtype, scaler


def install_stop_handlers():
    def handler(signum, frame):
        if StopRequest.requested:  # a second signal: give up at once
            sys.exit(128 + signum)
        StopRequest.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving last.pt",
              file=sys.stderr)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def stopped(args, ctx, where):
    if ctx.main:
        print(f"stopped {where}; saved {args.out}/last.pt. Continue with: --resume {args.out}",
              file=sys.stderr)
    return 130


def run(argv, description, default_model, val_combos):
    parser = build_parser(description, default_model, val_combos)
    args = parser.parse_args(argv)
    return _run(args, distributed.init(args.device), default_model, parser)


def resolve_args(args, parser, default_model):
    """-> (args, checkpoint to resume or None). A resumed run takes its recipe from the checkpoint;
    only where and how it runs may change, and only when given on this command line."""
    if not args.resume:
        args.model = args.model or default_model
        return args, None
    resume = load_checkpoint(args.resume)
    if args.model and resume["model"] != args.model:
        raise UserError(f"{resume['path']} is a checkpoint of {resume['model']!r}, not {args.model!r}")
    if "optimizer" not in resume:
        raise UserError(f"{resume['path']} holds weights only and cannot be resumed")
    # Where and how it runs may change, and --epochs to extend a run (the cosine schedule is
    # stretched from the step it has reached); the recipe itself may not.
    changed = {k: getattr(args, k) for k in ("workers", "device", "data_root", "out", "epochs", "log_every",
                                             "tensorboard")
               if getattr(args, k) != parser.get_default(k)}
    if "epochs" in changed and changed["epochs"] != resume["args"]["epochs"]:
        print(f"resuming {resume['path']} with --epochs {changed['epochs']} (was {resume['args']['epochs']})")
    defaults = vars(parser.parse_args([]))  # flags added since the checkpoint was written
    args = argparse.Namespace(**{**defaults, **resume["args"], **changed, "resume": args.resume,
                                 "pretrained": None, "init_from": None})  # weights: the checkpoint's
    return args, resume


def build_optimizer(model, args, steps_per_epoch):
    """SGD with Nesterov momentum, no weight decay on biases and norms, warm-up then cosine."""
    # Per-set BatchNorm scales and shifts are 2-D ([sets, C]) but are norms all the same.
    norms = {id(p) for m in model.modules() if isinstance(m, ComboBatchNorm2d) for p in m.parameters()}
    decay = [p for p in model.parameters() if p.ndim > 1 and id(p) not in norms]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 or id(p) in norms]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, momentum=args.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)))
    return optimizer, scheduler


def _run(args, ctx, default_model, parser):
    args, resume = resolve_args(args, parser, default_model)
    args.out = args.out or (os.path.dirname(resume["path"]) if resume else os.path.join("runs", args.model))
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    spec = describe_root(args.data_root)
    vocab = "RGB"
    val_combos = parse_combo_list(args.val_combos, vocab)
    train_combo = "".join(parse_combo(args.train_channels, vocab)) if args.train_channels else None
    if ctx.main:
        check_out_dir(args.out, resume is not None, args.overwrite)
        if spec.synthetic:
            print("data: built-in synthetic shapes (no DATA_ROOT configured)")
    distributed.barrier(ctx)

    config = model_config(args)
    seed_everything(args.seed)
    model = models.create_model(args.model, len(spec.classes), **config).to(ctx.device)
    config.pop("pretrained", None)  # the checkpoint carries the weights themselves
    if args.channel_aug is None:
        args.channel_aug = getattr(model, "channel_aug", "none")
    if args.channel_aug == "sandwich" and train_combo:
        raise UserError(f"--train-channels {train_combo} trains one fixed combination; "
                        "pass --channel-aug none instead of the sandwich")
    if args.init_from:
        init_from(model, args.init_from, spec.classes)
    if resume is not None:
        check_classes(resume, spec.classes)
        model.load_state_dict(resume["state_dict"])
    amp_dtype, scaler = amp_settings(args, ctx)
    criterion = LabelLoss(args.label_smoothing)
    teacher = None
    if args.teacher:
        _, teacher = load_model(args.teacher, spec.classes)
        teacher = deploy(teacher).to(ctx.device).eval().requires_grad_(False)
        criterion = DistillationLoss(criterion, teacher, args.kd_alpha, args.kd_temperature)
    # Channels are drawn from a generator re-seeded every epoch (see the loop).
    chan_gen = torch.Generator()
    augment = AUGMENTATIONS.get(args.channel_aug)
    if args.channel_aug == "subset":
        augment = functools.partial(augment, full_prob=args.full_prob)
    elif args.channel_aug == "sandwich":
        if args.sandwich_subsets < 1:
            raise UserError(f"--sandwich-subsets must be at least 1, got {args.sandwich_subsets}")
        criterion = SandwichLoss(criterion, args.sandwich_subsets, chan_gen)
    if ctx.device.type == "cuda" and args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    train_set = build_dataset(spec, "train", args.img_size, train=True, limit=args.limit, seed=args.seed)
    val_set = build_dataset(spec, "val", args.img_size, limit=args.limit, seed=args.seed)
    steps_per_epoch = len(train_set) // (args.batch_size * ctx.world)
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {args.batch_size} x {ctx.world} process(es) is larger than "
                        f"the {len(train_set)} training images")

    optimizer, scheduler = build_optimizer(model, args, steps_per_epoch)
    start_epoch, start_step, best_acc = 0, 0, -1.0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        start_epoch, start_step, best_acc = resume["epoch"], resume["step"], resume["best_acc"]

    net = model
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if args.compile and ctx.device.type == "cuda":
        net = torch.compile(net)

    def checkpoint(epoch, step):
        return {"model": args.model, "config": config, "classes": spec.classes, "data": spec.root,
                "args": vars(args), "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch, "step": step, "best_acc": best_acc, "rng": rng_state()}

    if ctx.main:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
        aug = args.channel_aug + (f" (full set p={args.full_prob})" if args.full_prob else "")
        aug += f" ({args.sandwich_subsets} reduced sets a step)" if args.channel_aug == "sandwich" else ""
        aug += f"; initialised from {args.init_from}" if args.init_from else ""
        aug += f", trained on {train_combo}" if train_combo else ""
        aug += f"; distilled from {args.teacher}" if teacher is not None else ""
        print(f"model {args.model} {config or ''}: {sum(p.numel() for p in model.parameters()):,} params; "
              f"{len(train_set)} train / {len(val_set)} val images at {args.img_size}px; "
              f"channel aug {aug}; device {ctx.device} x{ctx.world}; out {args.out}")
    install_stop_handlers()
    log_path = os.path.join(args.out, "log.csv")
    if ctx.main:
        start_log(log_path, ["epoch", "lr", "train_loss", "train_acc", "val_acc",
                             *[f"val_acc_{c}" for c in val_combos], "seconds"], start_epoch)
    val_loader = eval_loader(val_set, args.batch_size, args.workers, ctx)
    progress = Progress(args.epochs, steps_per_epoch, start_epoch, start_step, args.log_every,
                        os.path.join(args.out, "tensorboard") if args.tensorboard else None, ctx.main)
    for epoch in range(start_epoch, args.epochs):
        # Everything random in an epoch is seeded from (seed, epoch): resuming from the end of
        # any epoch replays exactly what an uninterrupted run does.
        seed_everything(args.seed * 1_000_003 + epoch * 1009 + ctx.rank)
        chan_gen.manual_seed(args.seed * 7919 + epoch)
        skip = start_step if epoch == start_epoch else 0
        t0 = time.time()
        stats = train_one_epoch(
            net, train_loader(train_set, args.batch_size, args.workers, args.seed, epoch, ctx, skip),
            optimizer, scheduler, ctx, epoch + 1, criterion, vocab=vocab, train_combo=train_combo,
            augment=augment, generator=chan_gen, amp_dtype=amp_dtype, scaler=scaler, start_step=skip,
            progress=progress)
        if stats["interrupted"]:
            progress.close()
            if ctx.main:
                save_atomic(checkpoint(epoch, stats["step"]), os.path.join(args.out, "last.pt"))
            return stopped(args, ctx, f"in epoch {epoch + 1} after step {stats['step']}")
        throughput = progress.summary()
        t_eval = time.time()
        results = evaluate(net, val_loader, ctx, val_combos, vocab, amp_dtype, desc="val")
        accs = {c: classification_metrics(t, p, len(spec.classes))["accuracy"] for c, (t, p) in results.items()}
        val_acc = float(np.mean(list(accs.values())))
        improved = val_acc > best_acc
        best_acc = max(best_acc, val_acc)
        progress.evaluated(epoch + 1, time.time() - t_eval, {
            "train/epoch_loss": stats["loss"], "train/epoch_acc": stats["acc"], "val/acc": val_acc,
            **{f"val/acc_{c}": a for c, a in accs.items()}})
        if ctx.main:
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow([epoch + 1, f"{scheduler.get_last_lr()[0]:.5f}", f"{stats['loss']:.4f}",
                                        f"{stats['acc']:.4f}", f"{val_acc:.4f}",
                                        *[f"{accs[c]:.4f}" for c in val_combos], f"{time.time() - t0:.1f}"])
            ckpt = checkpoint(epoch + 1, 0)
            save_atomic(ckpt, os.path.join(args.out, "last.pt"))
            if improved:
                save_atomic(ckpt, os.path.join(args.out, "best.pt"))
            training_curves(log_path, os.path.join(args.out, "curves.png"), f"{args.model} ({args.out})")
            print(f"epoch {epoch + 1}/{args.epochs}  loss {stats['loss']:.3f}  train acc {stats['acc']:.3f}  "
                  f"val acc {val_acc:.3f}{' (best)' if improved else ''}  [{time.time() - t0:.0f}s, "
                  f"{throughput}; eta {datetime.timedelta(seconds=round(progress.eta()))}]")
        if StopRequest.requested:  # the signal came during evaluation: the epoch is saved whole
            progress.close()
            return stopped(args, ctx, f"after epoch {epoch + 1}")
    progress.close()
    if ctx.main:
        print(f"best val acc {best_acc:.4f} (mean over {', '.join(val_combos)}); checkpoint {args.out}/best.pt; "
              f"curves {args.out}/curves.png")
    return 0
