"""The training run behind ``train_dw.py`` and ``train_rrdb.py``: its steps in order, the epochs,
checkpoints and logs. The flags and the resume policy are in ``flags.py``, the optimizer in
``optim.py``, the loop over one epoch in ``engine.py``.

Single process: ``python train_dw.py ...``; several GPUs: ``torchrun --nproc_per_node N train_dw.py ...``.
"""
import csv
import datetime
import functools
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torchvision.transforms import v2 as T

import models
from data import (
    DEFAULT_COMBOS,
    build_dataset,
    combo_name,
    default_combos,
    describe_root,
    list_fingerprint,
    parse_combo,
    parse_combo_list,
)
from data.channels import AUGMENTATIONS, RGB, vocab_names
from data.loaders import default_workers, eval_loader, train_loader
from engine import EMA, Run, State, StopRequest, evaluate, train_one_epoch
from flags import build_parser, describe_recipe, given_flags, model_config, resolve_args, resolved
from losses import DistillationLoss, LabelLoss, SandwichLoss
from models import inference_form
from models.loading import init_from, load_model
from optim import amp_settings, build_optimizer, load_optimizer
from utils import distributed
from utils.checkpoint import check_classes, load_part, save_atomic
from utils.errors import UserError
from utils.files import write_atomic
from utils.metrics import classification_metrics
from utils.progress import Progress
from utils.report import training_curves
from utils.rng import restore_rng, rng_state, seed_everything
from utils.run_folder import (
    claim_run_folder,
    discard_previous_run,
    earlier_log,
    log_header,
    remove_unfinished_run,
    restore_previous_run,
    set_aside_run,
    start_log,
)
from utils.validate import file_field


def main(argv, description, default_model, val_combos):
    parser = build_parser(description, default_model, val_combos)
    args = parser.parse_args(argv)
    args, resume = resolve_args(args, given_flags(parser, argv), parser, default_model)
    ctx = distributed.init(args.device)
    lock, replacing = None, False
    new_folder = not os.path.exists(args.out or os.path.join("runs", args.model))
    if ctx.main:
        args.out = args.out or os.path.join("runs", args.model)
        lock, replacing = claim_run_folder(args.out, resume, args.overwrite)
    try:
        return run_steps(args, resume, ctx, replacing)
    except BaseException:
        if replacing:  # failed before a checkpoint of its own: the run it was to replace comes back
            restore_previous_run(args.out)
        elif new_folder and ctx.main:
            remove_unfinished_run(args.out)
        raise
    finally:
        if lock is not None:
            lock.release()



def run_steps(args, resume, ctx, replacing=False):
    """The run in steps, each a function below in this order; the run it replaces is set aside,
    and its config written, only once every step that can refuse the run has passed."""
    prepare(args)
    spec, val_combos, train_combo = describe_data(args, ctx, resume)
    model, config = build_model(args, spec, resume, ctx, train_combo)
    run = Run(model, args=args, ctx=ctx, spec=spec, config=config, val_combos=val_combos, train_combo=train_combo)
    build_criterion(run)
    build_datasets(run, resume)
    state = training_state(run, resume)
    # After the EMA's copy (training_state), which is then evaluated as it is, uncompiled.
    run.net = distribute_and_compile(model, args, ctx)
    if ctx.main:
        earlier_log(os.path.join(args.out, "log.csv"), log_header(val_combos), state.epoch)
        if replacing:  # only now: a refusal above leaves the old run where it was
            set_aside_run(args.out)
        # the threads change a CPU run's arithmetic, so its numbers: tables say them (experiments/results)
        written = {**resolved(args, config), "threads": torch.get_num_threads()}
        write_atomic(os.path.join(args.out, "config.json"), lambda f: json.dump(written, f, indent=2))
        print(banner(run))
    StopRequest.install_handlers()
    return train_epochs(run, state, resume, replacing)



def prepare(args):
    args.out = args.out or os.path.join("runs", args.model)
    if args.workers is None:
        args.workers = default_workers()
    # cuDNN picks the fastest kernels for the (fixed) input shape, unless results must repeat.
    torch.backends.cudnn.benchmark = not args.deterministic
    if args.deterministic:
        torch.use_deterministic_algorithms(True)



def describe_data(args, ctx, resume=None):
    """-> (the data's description, the combinations validated, the one trained on or None). A
    multi-band root (``bands.txt``) is judged by default on its own sets (``default_combos``)."""
    spec = describe_root(args.data_root, resume.get("bands") if resume is not None else None)
    if spec.stats is not None and models.registry.model_task(args.model) != 1:
        raise UserError(f"{args.model!r} is a Task 2 model, which takes RGB photos; {spec.root} holds "
                        f"{len(spec.bands)} bands (bands.txt)")
    given = args.val_combos  # the flag as given: the data decides what the default stands for
    if spec.bands != RGB and given == ",".join(DEFAULT_COMBOS):
        given = ",".join(default_combos(spec.bands, spec.wavelengths))
    val_combos = parse_combo_list(given, spec.bands)
    train_combo = combo_name(parse_combo(args.train_channels, spec.bands)) if args.train_channels else None
    if ctx.main and spec.synthetic:
        print("data: built-in synthetic shapes (no DATA_ROOT configured)")
    distributed.barrier(ctx)
    return spec, val_combos, train_combo



def build_model(args, spec, resume, ctx, train_combo=None):
    """-> (the model, its constructor's arguments), with the weights it starts from; a pretrained
    stem that will only see ``train_combo`` is adapted to it (``FilledStem.inherit_for``)."""
    config = model_config(args)
    if spec.bands != RGB and models.registry.model_task(args.model) == 1:  # the data's bands, unless told
        config.setdefault("vocab", list(spec.bands))
        config.update(band_wavelengths(args.model, config, spec))
    seed_everything(args.seed)
    # A resumed run's weights are its checkpoint's: --pretrained and --init-from are its history.
    start = {**config, "pretrained": None} if resume is not None and "pretrained" in config else config
    try:
        model = models.create_model(args.model, len(spec.classes), **start).to(ctx.device)
    except (TypeError, ValueError) as exc:  # the model's own check of its options
        given = f"{resume['path']} (its args.model_opt)" if resume is not None else "--model-opt"
        raise UserError(f"model {args.model!r} refuses {given}: {exc}") from None
    config.pop("pretrained", None)  # the checkpoint carries the weights themselves
    if args.channel_aug is None:
        args.channel_aug = getattr(model, "channel_aug", "none")
    check_bands(model, spec, resume, train_combo)
    check_input_size(model, args.img_size, ctx.device)
    if args.pretrained and resume is None and train_combo and hasattr(model.stem, "inherit_for"):
        model.stem.inherit_for(train_combo)
    if args.init_from and resume is None:
        init_from(model, args.init_from, spec.classes)
    if resume is not None:
        check_classes(resume, spec.classes)
        load_part(resume, "state_dict", model.load_state_dict)
    if ctx.device.type == "cuda" and args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, config



def band_wavelengths(model, config, spec):
    """``{"wavelengths": ...}`` of the vocabulary's bands from the data's bands.txt, where the model
    takes them and was not given them; else nothing."""
    names = vocab_names(config["vocab"]) if isinstance(config["vocab"], (str, list, tuple)) else ()
    takes = "wavelengths" in models.registry.resolved_config(model)
    if "wavelengths" in config or spec.wavelengths is None or not takes or not set(names) <= set(spec.bands):
        return {}
    return {"wavelengths": [spec.wavelengths[spec.bands.index(n)] for n in names]}



def check_bands(model, spec, resume, train_combo):
    """A Task 1 model must know each band it trains on by name (else every step would fail)."""
    vocab = getattr(model, "vocab", RGB)
    unknown = [b for b in (parse_combo(train_combo, spec.bands) if train_combo else spec.bands) if b not in vocab]
    if unknown:
        given = f"{resume['path']} (its config)" if resume is not None else "--model-opt vocab"
        raise UserError(f"{given} names channels {', '.join(vocab)}; the data's band {unknown[0]!r} is not "
                        f"one of them (the data has {combo_name(spec.bands)}; train on fewer with --train-channels)")



@torch.no_grad()
def check_input_size(model, size, device):
    """One forward pass at ``size`` before training, so that a size too small for the body fails
    with a line that says so rather than a traceback in the first step."""
    was_training = model.training
    try:
        names = [model.vocab] if hasattr(model, "vocab") else []
        model.eval()(torch.zeros(1, len(getattr(model, "vocab", RGB)), size, size, device=device), *names)
    except RuntimeError as exc:
        raise UserError(f"--img-size {size} is too small for this model ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:
        raise UserError(f"this model does not take the data's images: {exc}") from None
    finally:
        model.train(was_training)



def build_criterion(run):
    """The loss (labels, then distillation, then the sandwich around them) and the channel
    augmentation, which draws from ``run.chan_gen`` as the sandwich does."""
    args = run.args
    if args.single_prob is not None and args.channel_aug not in ("subset", "sandwich"):
        raise UserError(f"--single-prob {args.single_prob:g} changes how subsets are drawn; this run trains with "
                        f"--channel-aug {args.channel_aug} (add --channel-aug subset or sandwich, or drop it)")
    if args.channel_aug == "sandwich" and run.train_combo and len(parse_combo(run.train_combo, run.spec.bands)) == 1:
        raise UserError(f"--train-channels {run.train_combo} trains one fixed combination; "
                        "pass --channel-aug none instead of the sandwich")
    run.criterion = LabelLoss(args.label_smoothing)
    if args.teacher:
        _, teacher = load_model(args.teacher, run.spec.classes)
        teacher = inference_form(teacher).to(run.ctx.device).requires_grad_(False)
        run.criterion = DistillationLoss(run.criterion, teacher, args.kd_alpha, args.kd_temperature)
    run.augment = AUGMENTATIONS.get(args.channel_aug)
    if args.channel_aug == "subset":
        run.augment = functools.partial(run.augment, single_prob=args.single_prob)
    elif args.channel_aug == "sandwich":
        run.criterion = SandwichLoss(run.criterion, args.sandwich_subsets, run.chan_gen, args.sandwich_fraction,
                                     args.sandwich_every, args.single_prob)



def build_datasets(run, resume):
    """The two splits, refused when a resumed run's lists changed; the optimizer steps an epoch."""
    args, spec, world = run.args, run.spec, run.ctx.world
    run.train_set = build_dataset(spec, "train", args.img_size, train=True, limit=args.limit, seed=args.seed)
    run.val_set = build_dataset(spec, "val", args.img_size, limit=args.limit, seed=args.seed)
    run.lists = list_fingerprint(run.train_set, run.val_set)
    changed = [k for k, v in run.lists.items() if resume is not None and resume.get("lists", run.lists).get(k) != v]
    if changed:
        name = changed[0]
        raise UserError(f"{resume['path']}: {os.path.join(spec.root, name)} changed since the run started "
                        f"({resume['lists'].get(name)} then, {run.lists[name]} now); the run's schedule and labels "
                        f"are the old list's: start a new run (e.g. --init-from {resume['path']})")
    run.steps_per_epoch = len(run.train_set) // (args.batch_size * world * args.accum_steps)
    if run.steps_per_epoch == 0:
        raise UserError(f"--batch-size {args.batch_size} x {world} process(es) x --accum-steps "
                        f"{args.accum_steps} is larger than the {len(run.train_set)} training images")



def training_state(run, resume):
    """Optimizer, schedule, loss scaler and EMA, fresh or as ``resume`` left them. A resumed run's
    schedule is rebuilt and moved to the step it reached (any older scheduler's state holds that
    count too), then the optimizer's state, LR included, is restored."""
    args = run.args
    run.amp_dtype, scaler = amp_settings(args, run.ctx)
    done = check_position(run, resume) if resume is not None else 0
    optimizer, scheduler = build_optimizer(run.model, args, run.steps_per_epoch, done)
    state = State(optimizer, scheduler, scaler)
    if resume is not None:
        load_part(resume, "optimizer", functools.partial(load_optimizer, optimizer))
        # The saved LR is the old schedule's: a finished run extended with --epochs would go on at 0.
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
        if scaler is not None and resume.get("scaler"):
            load_part(resume, "scaler", scaler.load_state_dict)
        state.epoch, state.step, state.best_acc = resume["epoch"], resume["step"], resume["best_acc"]
        state.best_epoch, state.tally = resume.get("best_epoch"), resume.get("epoch_tally")
        if resume.get("criterion") is not None and hasattr(run.criterion, "load_state_dict"):
            load_part(resume, "criterion", run.criterion.load_state_dict)
        elif hasattr(run.criterion, "load_state_dict"):  # written before criteria kept a state: one call a batch
            run.criterion.load_state_dict({"steps": scheduler.last_epoch * args.accum_steps})
    state.ema = EMA(run.model, args.ema) if args.ema else None
    if state.ema is not None and resume is not None and resume.get("ema"):
        load_part(resume, "ema", state.ema.load_state_dict)
    return state


def check_position(run, resume):
    """-> the optimizer steps the resumed run has done, once its place is one this run has: a
    step inside an epoch, and a schedule position, that its data and batch size can reach (moving
    the schedule on is a loop of that many steps); a stop inside an epoch, RNG states that restore."""
    micro_batches = run.steps_per_epoch * run.args.accum_steps
    if resume["step"] >= micro_batches:
        raise UserError(f"{resume['path']}: field 'step' {resume['step']} is beyond the {micro_batches} batches of "
                        "an epoch of this run; a damaged checkpoint")
    if resume["step"] and "chan_gen" in resume:
        # Restored here once, before anything is written; the epoch re-seeds, then restores them.
        restore_rng(resume, torch.Generator())
    steps = run.args.epochs * run.steps_per_epoch
    return file_field(resume["path"], resume["scheduler"], "last_epoch", int, within="scheduler", low=0, high=steps)



def distribute_and_compile(model, args, ctx):
    """What trains: DDP around the model with several processes; the model compiled in place
    (``nn.Module.compile``), so that the state dict keeps its keys and checkpoints stay plain."""
    net = model
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if args.compile:
        (model.body if hasattr(model, "body") else model).compile(backend=args.compile_backend)
    return net



def banner(run):
    """The run in one line: model, data, augmentation and recipe options, device, folder."""
    args = run.args
    return (f"model {args.model} {run.config or ''}: {sum(p.numel() for p in run.model.parameters()):,} params; "
            f"{len(run.train_set)} train / {len(run.val_set)} val images at {args.img_size}px; "
            f"channel aug {describe_recipe(args)}; device {run.ctx.device} x{run.ctx.world}; {global_batch(run)}; "
            f"{args.workers} loader workers"
            f"{', JPEGs decoded on the device' if args.decode == 'device' else ''}; out {args.out}")


def global_batch(run):
    """The batch an optimizer step sees, and the rule for the LR: it is used as given."""
    args, world = run.args, run.ctx.world
    parts = [f"{world} processes" if world > 1 else "",
             f"{args.accum_steps} micro-batches" if args.accum_steps > 1 else ""]
    of = " x ".join([p for p in parts if p] + [str(args.batch_size)])
    size = args.batch_size * world * args.accum_steps
    return (f"global batch {size}" + (f" ({of})" if size != args.batch_size else "")
            + f", peak LR {args.lr:g} as given (not scaled with the global batch)")



def stopped(args, ctx, where):
    if ctx.main:
        print(f"stopped {where}; saved {args.out}/last.pt. Continue with: --resume {args.out}",
              file=sys.stderr)
    return 128 + StopRequest.signum  # the shell's convention: 130 after SIGINT, 143 after SIGTERM



def checkpoint(run, state):
    """Everything a resume needs (``--resume``) and the test scripts read."""
    args = run.args
    return {"model": args.model, "config": run.config, "classes": run.spec.classes,
            "data": run.spec.root if run.spec.synthetic else os.path.abspath(run.spec.root),
            "args": vars(args), "state_dict": run.model.state_dict(),
            "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "epoch": state.epoch, "step": state.step, "best_acc": state.best_acc, "best_epoch": state.best_epoch,
            "epoch_tally": list(state.tally) if state.step and state.tally else None,
            "criterion": run.criterion.state_dict() if hasattr(run.criterion, "state_dict") else None,
            "rng": rng_state(), "chan_gen": run.chan_gen.get_state(), "lists": run.lists,
            "ema": state.ema.state_dict() if state.ema is not None else None,
            **({"bands": run.spec.record()} if run.spec.stats is not None else {})}



def train_epochs(run, state, resume, replacing):
    """The epochs left; a stop request (Ctrl-C, SIGTERM) saves last.pt and returns 128 + signal."""
    args, ctx = run.args, run.ctx
    log_path = os.path.join(args.out, "log.csv")
    if ctx.main:
        start_log(log_path, log_header(run.val_combos), state.epoch)
    val_loader = eval_loader(run.val_set, args.batch_size, args.workers, ctx, args.decode)
    loader = train_loader(run.train_set, args.batch_size, args.workers, args.seed, ctx, args.decode)
    mix = batch_mixing(args, len(run.spec.classes))
    micro_batches = run.steps_per_epoch * args.accum_steps
    start_epoch, start_step = state.epoch, state.step
    with Progress(args.epochs, micro_batches, start_epoch, start_step, args.log_every,
                  os.path.join(args.out, "tensorboard") if args.tensorboard else None, ctx.main) as progress:
        for epoch in range(start_epoch, args.epochs):
            # Everything random in an epoch is seeded from (seed, epoch), each image's augmentation
            # from its position (data/loaders.py): resuming from the end of any epoch replays exactly
            # what an uninterrupted run does, and inside an epoch so do the RNG states saved there.
            seed_everything(args.seed * 1_000_003 + epoch * 1009 + ctx.rank)
            run.chan_gen.manual_seed(args.seed * 7919 + epoch)
            skip = start_step if epoch == start_epoch else 0
            if skip and "chan_gen" in resume:
                restore_rng(resume, run.chan_gen)
            loader.sampler.set_epoch(epoch, skip)
            t0 = time.time()
            stats = train_one_epoch(run, state, loader, epoch + 1, mix=mix, progress=progress, start_step=skip)
            if stats["interrupted"]:
                state.epoch, state.step, state.tally = epoch, stats["step"], stats["tally"]
                if ctx.main:
                    save_atomic(checkpoint(run, state), os.path.join(args.out, "last.pt"))
                    if replacing:
                        discard_previous_run(args.out)
                return stopped(args, ctx, f"in epoch {epoch + 1} after step {stats['step']}")
            end_epoch(run, state, epoch + 1, stats, val_loader, progress, t0, replacing)
            if StopRequest.requested:  # the signal came during evaluation: the epoch is saved whole
                return stopped(args, ctx, f"after epoch {epoch + 1}")
    if ctx.main:
        print(f"best val acc {state.best_acc:.4f} (mean over {', '.join(run.val_combos)}); checkpoint "
              f"{args.out}/best.pt; curves {args.out}/curves.png")
    return 0



def batch_mixing(args, num_classes):
    """MixUp and/or CutMix from torchvision (one of the two per batch when both are asked), or None."""
    mixes = [T.MixUp(alpha=args.mixup, num_classes=num_classes)] if args.mixup else []
    mixes += [T.CutMix(alpha=args.cutmix, num_classes=num_classes)] if args.cutmix else []
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else T.RandomChoice(mixes)



def validate(run, state, val_loader, epoch):
    """Accuracy per validated combination (the EMA when there is one); NaN for each on an epoch
    that ``--val-every`` skips (never the last), which then cannot become best.pt."""
    args, ctx = run.args, run.ctx
    if epoch % args.val_every and epoch != args.epochs:
        return {c: float("nan") for c in run.val_combos}
    results = evaluate(state.ema.module if state.ema is not None else run.net, val_loader, ctx, run.val_combos,
                       run.spec.bands, run.amp_dtype, desc="val (EMA)" if state.ema is not None else "val",
                       stats=run.spec.stats)
    return {c: classification_metrics(t, p, len(run.spec.classes))["accuracy"] for c, (t, p) in results.items()}



def end_epoch(run, state, epoch, stats, val_loader, progress, t0, replacing):
    """Validate (the EMA when there is one), then log, save last.pt (and best.pt when better),
    draw the curves and print the epoch's line."""
    args, ctx = run.args, run.ctx
    throughput = progress.summary()
    t_eval = time.time()
    train_time = t_eval - t0  # loading and steps, without validation
    accs = validate(run, state, val_loader, epoch)
    val_acc = float(np.mean(list(accs.values())))
    improved = val_acc > state.best_acc
    if improved:
        state.best_acc, state.best_epoch = val_acc, epoch
    state.epoch, state.step = epoch, 0
    progress.evaluated(epoch, time.time() - t_eval, {
        "train/epoch_loss": stats["loss"], **distill_scalar(stats), "train/epoch_acc": stats["acc"], "val/acc": val_acc,
        **{f"val/acc_{c}": a for c, a in accs.items()}})
    if not ctx.main:
        return
    log_path = os.path.join(args.out, "log.csv")
    with open(log_path, "a", newline="") as f:
        csv.writer(f).writerow([epoch, f"{state.scheduler.get_last_lr()[0]:.5f}", f"{stats['loss']:.4f}",
                                f"{stats['acc']:.4f}", f"{val_acc:.4f}", *[f"{accs[c]:.4f}" for c in run.val_combos],
                                f"{time.time() - t0:.1f}", f"{train_time:.1f}", f"{stats['distill']:.4f}"])
    ckpt = checkpoint(run, state)
    save_atomic(ckpt, os.path.join(args.out, "last.pt"))
    if improved:
        save_atomic(ckpt, os.path.join(args.out, "best.pt"))
    if replacing:  # the new run has a checkpoint: the one it replaced can go
        discard_previous_run(args.out)
    training_curves(log_path, os.path.join(args.out, "curves.png"), f"{args.model} ({args.out})")
    distill = f"  distill {stats['distill']:.3f}" if math.isfinite(stats["distill"]) else ""
    print(f"epoch {epoch}/{args.epochs}  loss {stats['loss']:.3f}{distill}  train acc {stats['acc']:.3f}  "
          f"{'not validated' if math.isnan(val_acc) else f'val acc {val_acc:.3f}'}{' (best)' if improved else ''}  "
          f"[{time.time() - t0:.0f}s, "
          f"{throughput}; eta {datetime.timedelta(seconds=round(progress.eta()))}]")



def distill_scalar(stats):
    """The distillation loss for TensorBoard, when the epoch made sandwich passes."""
    return {"train/epoch_distill": stats["distill"]} if math.isfinite(stats["distill"]) else {}


if __name__ == "__main__":  # the run needs a task's flags and defaults, which its entry script gives
    print("error: train.py is the training run behind the entry scripts; start it with train_dw.py (Task 1) "
          "or train_rrdb.py (Task 2)", file=sys.stderr)
    sys.exit(2)
