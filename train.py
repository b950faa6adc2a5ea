"""The training run behind ``train_dw.py`` and ``train_rrdb.py``: flags, data, checkpoints, resume.

Single process: ``python train_dw.py ...``; several GPUs: ``torchrun --nproc_per_node N train_dw.py ...``.
"""
import argparse
import ast
import copy
import csv
import datetime
import functools
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import v2 as T

import models
from data import DataSpec, build_dataset, describe_root, parse_combo, parse_combo_list
from data.channels import AUGMENTATIONS
from data.loaders import DECODE, DECODE_HELP, default_workers, eval_loader, train_loader
from engine import EMA, StopRequest, evaluate, train_one_epoch
from losses import DistillationLoss, LabelLoss, SandwichLoss, StoredTargets
from models import deploy
from models.loading import init_from, load_model
from models.norm import ComboBatchNorm2d
from utils import distributed
from utils.checkpoint import RESUME, check_classes, check_fields, load_checkpoint, save_atomic
from utils.errors import Parser, UserError, at_least, between, img_side, non_empty
from utils.files import write_atomic
from utils.metrics import classification_metrics
from utils.progress import Progress
from utils.report import training_curves
from utils.run_folder import (
    RunLock,
    check_out_dir,
    discard_previous_run,
    reconcile_best,
    remove_stray_temporaries,
    remove_unfinished_run,
    restore_previous_run,
    set_aside_run,
)
from utils.validate import file_field, log_row, read_log

# Where and how a run goes may change when it is resumed; everything else is its recipe.
SAFE_ON_RESUME = ("out", "workers", "decode", "device", "data_root", "epochs", "log_every", "tensorboard",
                  "compile", "deterministic")
# Recipe flags added after runs had begun, with the value those runs trained with; a checkpoint
# without them resumes with these, not with today's defaults.
BEFORE_FLAG = {"sandwich_fraction": 1.0, "sandwich_scale": 1.0, "sandwich_every": 1, "opt": "sgd", "sched": "cosine",
               "model_opt": [], "ema": None, "mixup": 0.0, "cutmix": 0.0, "accum_steps": 1,
               "val_every": 1, "sandwich_packed": False, "sandwich_delay": 0.0,
               "sandwich_stored": False}


DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}  # the peak learning rate when --lr is not given
SCHEDULES = {"cosine": "warm-up, then cosine decay to 0", "step": "warm-up, then x0.1 at 1/2 and 3/4 of the steps",
             "constant": "warm-up, then the peak LR to the end"}


def build_parser(description, default_model, val_combos):
    """The flags of one task's script: Task 2's command line has none of Task 1's channel flags
    (they keep Task 1's inert defaults, so that both tasks share one run)."""
    task = models.registry.model_task(default_model)
    p = Parser(description=description)
    p.add_argument("--model", default=None,
                   help=f"default {default_model}; one of: {', '.join(models.list_models(task))}")
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE", type=model_option,
                   help="an argument of the model's constructor (repeatable), e.g. widths=64,128,256")
    if task == 1:
        add_task1_flags(p)
    else:  # Task 1's flags at their defaults, read from the flags themselves
        task1 = argparse.ArgumentParser(add_help=False)
        add_task1_flags(task1)
        p.set_defaults(**vars(task1.parse_args([])))
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "."),
                   help="folder with train/val/test.txt and images/ ($DATA_ROOT), or 'synthetic'")
    p.add_argument("--limit", type=at_least(1), default=None, help="use this many images per split (evenly spaced)")
    add_recipe_flags(p)
    p.add_argument("--val-combos", default=val_combos, type=non_empty,
                   help="model selection uses their mean val accuracy" +
                        (" (default with --train-channels: that combination)" if task == 1 else ""))
    p.add_argument("--val-every", type=at_least(1), default=1, metavar="N",
                   help="validate every N-th epoch and the last (best.pt is chosen among them): validating "
                        "many combinations costs as much as training on a small training split")
    p.add_argument("--teacher", default=None, help="checkpoint to distil from (e.g. our own ResNet34)")
    p.add_argument("--kd-alpha", type=between(0, 1), default=0.5, help="weight of the distillation loss")
    p.add_argument("--kd-temperature", type=at_least(1e-3, float), default=4.0, help="softens both logits")
    p.add_argument("--seed", type=at_least(0), default=0, help="weights, data order and augmentation")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="loader processes per training process (default: its cores minus one, "
                        f"{default_workers()} here)")
    p.add_argument("--decode", default="workers", choices=DECODE, help=DECODE_HELP)
    p.add_argument("--out", default=None, help="run folder (default runs/<model>)")
    p.add_argument("--resume", default=None, help="run folder or checkpoint to continue")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a folder holding another run")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when there is one")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="CUDA only")
    p.add_argument("--channels-last", action="store_true", help="CUDA only")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile what has a fixed shape: a Task 1 model's body (one graph for every "
                        "channel combination), a Task 2 model whole")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (e.g. aot_eager)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume)")
    p.add_argument("--log-every", type=at_least(1), default=50, help="a progress line every N steps (and at epoch end)")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard scalars under <out>/tensorboard")
    return p


def add_recipe_flags(p):
    """Budget, optimizer, schedule and regularisation: the same for both tasks."""
    p.add_argument("--epochs", type=at_least(1), default=30, help="the schedule's length")
    p.add_argument("--batch-size", type=at_least(1), default=64,
                   help="per process (per micro-batch with --accum-steps)")
    p.add_argument("--accum-steps", type=at_least(1), default=1, metavar="N",
                   help="one optimizer step per N micro-batches of --batch-size (their gradients added)")
    p.add_argument("--img-size", type=img_side, default=224, help="training crop side in pixels")
    p.add_argument("--opt", default="sgd", choices=["sgd", "adamw"],
                   help="sgd: Nesterov momentum; adamw: decoupled weight decay (torch.optim)")
    # the bound: a larger step overflows float32 weights at the first update
    p.add_argument("--lr", type=at_least(0.0, float, high=1e30), default=None,
                   help="peak learning rate (default 0.1 for sgd, 1e-3 for adamw)")
    p.add_argument("--sched", default="cosine", choices=list(SCHEDULES),
                   help="; ".join(f"{k}: {v}" for k, v in SCHEDULES.items()) + " (torch.optim.lr_scheduler, per step)")
    p.add_argument("--momentum", type=between(0, 1, high_open=True), default=0.9, help="sgd")
    p.add_argument("--weight-decay", type=at_least(0.0, float), default=5e-4, help="weights only, not biases or norms")
    p.add_argument("--warmup-epochs", type=at_least(0.0, float), default=1.0, help="linear LR warm-up")
    p.add_argument("--label-smoothing", type=between(0, 1, high_open=True), default=0.1,
                   help="on the labels' loss")
    p.add_argument("--mixup", type=at_least(0.0, float), default=0.0, metavar="ALPHA",
                   help="MixUp with Beta(ALPHA, ALPHA) weights (torchvision.transforms.v2.MixUp; 0: off)")
    p.add_argument("--cutmix", type=at_least(0.0, float), default=0.0, metavar="ALPHA",
                   help="CutMix (v2.CutMix; 0: off); with --mixup too, each batch gets one of the two")
    p.add_argument("--ema", type=between(0, 1, low_open=True, high_open=True), default=None, metavar="DECAY",
                   help="also keep an exponential moving average of the weights (e.g. 0.999): validation, "
                        "best.pt and the test scripts use it (--no-ema there for the raw weights)")


def add_task1_flags(p):
    p.add_argument("--backbone", default="densenet121", help="body: densenet121|resnet18|small")
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
    p.add_argument("--channel-aug", default=None, choices=["none", "shuffle", "subset", "dropout", "sandwich"],
                   help="channel augmentation (default: the model's own); sandwich: every step trains "
                        "the full set on labels and --sandwich-subsets reduced sets towards it")
    p.add_argument("--sandwich-subsets", type=at_least(1), default=2,
                   help="reduced combinations per sandwich step (the first a single channel)")
    p.add_argument("--sandwich-all-singles", action="store_true",
                   help="the sandwich's first reduced combination is every single channel, one pass each")
    p.add_argument("--sandwich-fraction", type=between(0, 1, low_open=True), default=0.25,
                   help="share of the batch each reduced combination trains on (a different slice each)")
    p.add_argument("--sandwich-scale", type=between(0, 1, low_open=True), default=1.0,
                   help="reduced combinations see the images at this share of their side")
    p.add_argument("--sandwich-every", type=at_least(1), default=3,
                   help="every N-th step is a sandwich; the others train one sampled combination on the labels")
    p.add_argument("--sandwich-packed", action="store_true",
                   help="a sandwich step is one forward and one backward: the reduced views of the batch's "
                        "images ride in the same batch as the full set, whose output is their target")
    p.add_argument("--sandwich-delay", type=between(0, 1, high_open=True), default=0.0, metavar="FRACTION",
                   help="the first FRACTION of the steps train the full set alone, then the sandwich starts")
    p.add_argument("--sandwich-stored", action="store_true",
                   help="steps between sandwiches also train their combination towards each image's latest "
                        "full-set prediction, kept by image (no extra pass)")
    p.add_argument("--full-prob", type=between(0, 1), default=0.0,
                   help="subset augmentation: probability that a batch keeps every channel")
    p.add_argument("--train-channels", default=None, type=non_empty,
                   help="train on this fixed combination only, e.g. R")


def model_option(text):
    """``key=value`` -> (key, value); the value read as a Python literal (``64,128`` a tuple,
    ``True``, ``0.5``) or else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        value = value.strip()
    return key.strip(), value


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state():
    """RNG states in plain types and tensors only, so that checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
            "torch": torch.get_rng_state()}


@torch.no_grad()
def check_input_size(model, size, device):
    """One forward pass at ``size`` before training, so that a size too small for the body fails
    with a line that says so rather than a traceback in the first step."""
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, 3, size, size, device=device))
    except RuntimeError as exc:
        raise UserError(f"--img-size {size} is too small for this model ({str(exc).splitlines()[0]})") from None
    finally:
        model.train(was_training)


def restore_rng(state, chan_gen):
    """The RNG states saved by a stop inside an epoch (``rng_state``, the channel generator)."""
    rng = file_field(state["path"], state, "rng", dict)

    def restore(_):
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])
        chan_gen.set_state(state["chan_gen"])
    load_part(state, "rng", restore)


def load_part(ckpt, name, load):
    """``load`` the checkpoint's field ``name``; a state that does not fit this run is one line
    naming the checkpoint and the field, not a traceback."""
    try:
        load(ckpt[name])
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # past a header line
        raise UserError(f"{ckpt['path']}: field {name!r} does not fit this run ({reason}); "
                        "a damaged checkpoint, or one of another run") from None


def model_config(args):
    """The constructor's arguments: Task 1's flags, then every ``--model-opt``."""
    config = {}
    if models.registry.model_task(args.model) == 1:
        options = {"base": args.stem_base, "combo_bn": args.combo_bn, "combo_affine": args.combo_affine}
        config = {"backbone": args.backbone, "pretrained": args.pretrained,
                  **{k: v for k, v in options.items() if v is not None}}
    return {**config, **dict(args.model_opt)}


def batch_mixing(args, num_classes):
    """MixUp and/or CutMix from torchvision (one of the two per batch when both are asked), or None."""
    mixes = [T.MixUp(alpha=args.mixup, num_classes=num_classes)] if args.mixup else []
    mixes += [T.CutMix(alpha=args.cutmix, num_classes=num_classes)] if args.cutmix else []
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else T.RandomChoice(mixes)


def distill_scalar(stats):
    """The distillation loss for TensorBoard, when the epoch made sandwich passes."""
    return {"train/epoch_distill": stats["distill"]} if math.isfinite(stats["distill"]) else {}


def resolved(args, config):
    """The run's flags with those left to the model (``None``) at the values the model took."""
    if models.registry.model_task(args.model) != 1:
        return vars(args)
    took = models.registry.resolved_config(args.model, **config)
    flags = {"stem_base": "base", "combo_bn": "combo_bn", "combo_affine": "combo_affine"}
    return {**vars(args), **{f: took.get(k) for f, k in flags.items() if getattr(args, f) is None}}


def start_log(path, header, epochs_done):
    """A fresh log, or the old one cut back to the epochs the resumed checkpoint holds (a kill
    between the log line and the checkpoint would otherwise leave a row twice)."""
    rows = earlier_log(path, header, epochs_done)
    write_atomic(path, lambda f: csv.writer(f).writerows([header, *rows]))


def earlier_log(path, header, epochs_done):
    """The rows of the log at ``path`` that a run with ``epochs_done`` keeps; a log that cannot
    be read is one line (``_run`` reads it before anything is written, to say so in time)."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder where the run's log goes; move it away")
    if not epochs_done or not os.path.exists(path):
        return []
    # Blank or cut lines (a kill mid-line, an editor's trailing newline) are no epoch's.
    return [r for r in read_log(path)[1] if log_row(r, header, epochs_done)]


def log_header(run):
    return [*LOG_COLUMNS[:5], *[f"val_acc_{c}" for c in run.val_combos], *LOG_COLUMNS[5:]]


def amp_settings(args, ctx):
    if ctx.device.type != "cuda":
        for flag, on in (("--amp", args.amp != "off"), ("--channels-last", args.channels_last)):
            if on:
                warnings.warn(f"{flag} is ignored on CPU", stacklevel=2)
        return None, None
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    return dtype, scaler


def install_stop_handlers():
    def handler(signum, frame):
        if StopRequest.requested:  # a second signal: give up at once
            sys.exit(128 + signum)
        StopRequest.requested, StopRequest.signum = True, signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving last.pt",
              file=sys.stderr)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def stopped(args, ctx, where):
    if ctx.main:
        print(f"stopped {where}; saved {args.out}/last.pt. Continue with: --resume {args.out}",
              file=sys.stderr)
    return 128 + StopRequest.signum  # the shell's convention: 130 after SIGINT, 143 after SIGTERM


def run(argv, description, default_model, val_combos):
    parser = build_parser(description, default_model, val_combos)
    args = parser.parse_args(argv)
    args, resume = resolve_args(args, given_flags(parser, argv), parser, default_model)
    ctx = distributed.init(args.device)
    lock, replacing = None, False
    new_folder = not os.path.exists(args.out or os.path.join("runs", args.model))
    if ctx.main:
        lock, replacing = claim_out_dir(args, resume)
    try:
        return _run(args, resume, ctx, replacing)
    except BaseException:
        if replacing:  # failed before a checkpoint of its own: the run it was to replace comes back
            restore_previous_run(args.out)
        elif new_folder and ctx.main:
            remove_unfinished_run(args.out)
        raise
    finally:
        if lock is not None:
            lock.release()


def given_flags(parser, argv):
    """The destinations of the flags written on this command line (defaults left out)."""
    quiet = copy.deepcopy(parser)
    quiet._defaults = {}  # the other task's inert flags (set_defaults) are written nowhere
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def _flag(dest):
    return "--" + dest.replace("_", "-")


def resolve_args(args, given, parser, default_model):
    """-> (args, checkpoint to resume or None). A resumed run takes its recipe from the checkpoint:
    a recipe flag given with a different value is refused; where and how it runs may change
    (``SAFE_ON_RESUME``), and each change is printed. It writes into the folder named on this
    command line (``--out``, else the checkpoint's own folder), never the one stored inside."""
    task = models.registry.model_task(default_model)
    if args.model and args.model in models.list_models() and models.registry.model_task(args.model) != task:
        script = "train_dw.py" if task == 2 else "train_rrdb.py"
        raise UserError(f"model {args.model!r} is a Task {3 - task} model; train it with {script}")
    if not args.resume:
        args.model = args.model or default_model
        args.lr = args.lr if args.lr is not None else DEFAULT_LR[args.opt]
        if args.train_channels and "val_combos" not in given:  # a model that sees only R is judged on R
            args.val_combos = args.train_channels
        return args, None
    resume = load_checkpoint(args.resume)
    if args.model and resume["model"] != args.model:
        raise UserError(f"{resume['path']} is a checkpoint of {resume['model']!r}, not {args.model!r}")
    if "optimizer" not in resume:
        raise UserError(f"{resume['path']} holds weights only and cannot be resumed")
    check_fields(resume, resume["path"], needed=RESUME)
    stored = stored_recipe(parser, resume)
    refused = sorted(k for k in given - {"resume", "model", "overwrite", *SAFE_ON_RESUME}
                     if getattr(args, k) != stored.get(k))
    if refused:
        raise UserError(f"--resume continues {resume['path']} with the recipe it was started with; "
                        f"{', '.join(_flag(k) for k in refused)} cannot change (start a new run, e.g. with "
                        f"--init-from {resume['path']})")
    changed = {k: getattr(args, k) for k in given & set(SAFE_ON_RESUME) - {"out"}}
    for k, v in changed.items():
        if v != stored.get(k):
            # --epochs stretches the cosine schedule from the step the run has reached
            print(f"resuming {resume['path']} with {_flag(k)} {v} (was {stored.get(k)})")
    if changed.get("epochs", stored["epochs"]) < resume["epoch"] + (resume["step"] > 0):
        raise UserError(f"--epochs {changed['epochs']}: {resume['path']} has done {resume['epoch']} epoch(s)"
                        f"{' and part of the next' if resume['step'] else ''}; a resume trains on, never back")
    out = args.out if "out" in given else _folder(resume["path"])
    args = argparse.Namespace(**{**stored, **changed, "out": out, "resume": args.resume, "overwrite": args.overwrite})
    return args, resume


def stored_recipe(parser, resume):
    """The flags the checkpoint was trained with (a flag added since at the value runs had before
    it), each one checked as the flag checks the command line: a checkpoint cannot resume a run
    with a value its flag refuses (a batch of 10^9 images, an LR that is a string)."""
    for action in parser._actions:
        if action.dest in resume["args"]:
            problem = flag_problem(action, resume["args"][action.dest])
            if problem:
                raise UserError(f"{resume['path']}: field 'args.{action.dest}' {problem}; a damaged checkpoint")
    return {**vars(parser.parse_args([])), **BEFORE_FLAG, **resume["args"]}


def flag_problem(action, value):
    """Why ``value`` is not one that ``action`` (a flag of ``build_parser``) gives; None if it is."""
    if value is None and action.default is None:
        return None
    if action.nargs == 0:  # --flag, --flag/--no-flag
        return None if isinstance(value, bool) else f"is {value!r}, not true or false"
    if action.type is model_option:
        pairs = isinstance(value, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) for p in value)
        return None if pairs else f"is {value!r}, not a list of (KEY, VALUE) pairs"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"is {value!r}, not a value {_flag(action.dest)} takes"
    if action.choices is not None and value not in action.choices:
        return f"is {value!r}, not one of {', '.join(map(str, action.choices))}"
    try:
        parsed = (action.type or str)(str(value))
    except (argparse.ArgumentTypeError, ValueError) as exc:
        return f"is {value!r}: {exc}"
    return None if parsed == value and type(parsed) is type(value) else \
        f"is {value!r} ({type(value).__name__}), not what {_flag(action.dest)} gives"


def _folder(path):
    """The run folder of a checkpoint file; "." for a bare file name (resuming from inside it)."""
    return os.path.dirname(path) or "."


def claim_out_dir(args, resume):
    """Check, lock and tidy the run folder before anything is written; -> (the held lock, whether
    the run replaces another one there: ``--overwrite``, acted on at the first write)."""
    args.out = args.out or os.path.join("runs", args.model)
    continuing = resume is not None and os.path.isdir(args.out) and \
        os.path.samefile(args.out, _folder(resume["path"]))
    check_out_dir(args.out, continuing, args.overwrite)
    lock = RunLock(args.out).acquire()
    remove_stray_temporaries(args.out)
    if continuing:
        reconcile_best(args.out)
    if resume is not None and not continuing:  # the log so far travels with the run
        old_log = os.path.join(_folder(resume["path"]), "log.csv")
        if os.path.isfile(old_log):
            shutil.copyfile(old_log, os.path.join(args.out, "log.csv"))
    return lock, args.overwrite and not continuing


def list_fingerprint(*datasets):
    """Each split's list file in short (its images and a digest of its bytes), so that a resume
    can tell the lists it was started with from edited ones."""
    prints = {}
    for d in datasets:
        path = getattr(d, "list_path", None)  # the built-in synthetic data has none
        if path:
            with open(path, "rb") as f:
                prints[os.path.basename(path)] = f"{len(d)} images, sha256 {hashlib.sha256(f.read()).hexdigest()[:12]}"
    return prints


def build_optimizer(model, args, steps_per_epoch, steps_done=0):
    """SGD (Nesterov) or AdamW, no weight decay on biases and norms; a linear warm-up, then the
    ``--sched`` schedule, stepped once per optimizer step and moved on to ``steps_done`` (a resumed
    run: the schedule is a function of the step, so an extended run's is stretched from there)."""
    # Per-set BatchNorm scales and shifts are 2-D ([sets, C]) but are norms all the same.
    norms = {id(p) for m in model.modules() if isinstance(m, ComboBatchNorm2d) for p in m.parameters()}
    decay = [p for p in model.parameters() if p.ndim > 1 and id(p) not in norms]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 or id(p) in norms]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.opt]
    try:
        optimizer = (torch.optim.SGD(groups, lr=lr, momentum=args.momentum, nesterov=True) if args.opt == "sgd"
                     else torch.optim.AdamW(groups, lr=lr))
    except ValueError as exc:  # e.g. Nesterov momentum with --momentum 0
        raise UserError(f"the optimizer refuses --lr {args.lr} --momentum {args.momentum} "
                        f"--weight-decay {args.weight_decay}: {exc}") from None
    total, warmup = args.epochs * steps_per_epoch, min(round(args.warmup_epochs * steps_per_epoch),
                                                       args.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler
    main = {"cosine": lambda: sched.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1)),
            "step": lambda: sched.MultiStepLR(optimizer, [total // 2 - warmup, 3 * total // 4 - warmup], 0.1),
            "constant": lambda: sched.ConstantLR(optimizer, factor=1.0, total_iters=0)}[args.sched]
    if warmup:
        # Step i of the warm-up runs at (i + 1) / warmup of the peak.
        ramp = sched.LinearLR(optimizer, 1 / warmup, 1.0, total_iters=max(warmup - 1, 1))
        scheduler = sched.SequentialLR(optimizer, [ramp, main()], milestones=[warmup])
    else:
        scheduler = main()
    with warnings.catch_warnings():  # moving on before any optimizer step is the point here
        warnings.filterwarnings("ignore", "Detected call of")
        for _ in range(steps_done):
            scheduler.step()
    return optimizer, scheduler


VOCAB = "RGB"  # the channels every image comes with, in this order


@dataclass
class Run:
    """What the epochs of a run work with, built by the steps of ``_run``."""
    args: argparse.Namespace
    ctx: distributed.Context
    spec: DataSpec
    config: dict  # the model constructor's arguments, as the checkpoints store them
    model: torch.nn.Module  # the weights that are saved
    val_combos: list
    train_combo: str = None  # --train-channels, canonical
    net: torch.nn.Module = None  # what trains: the model, wrapped for several processes and compiled
    criterion: torch.nn.Module = None
    augment: object = None  # the channel augmentation
    chan_gen: torch.Generator = field(default_factory=torch.Generator)  # re-seeded every epoch
    train_set: torch.utils.data.Dataset = None
    val_set: torch.utils.data.Dataset = None
    lists: dict = None  # list_fingerprint of the splits
    steps_per_epoch: int = 0  # optimizer steps
    amp_dtype: torch.dtype = None


@dataclass
class State:
    """What changes as a run trains, and what a checkpoint saves besides the weights."""
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object = None
    ema: EMA = None
    epoch: int = 0  # epochs done
    step: int = 0  # micro-batches of the next epoch done (a stop inside it)
    tally: tuple = None  # and the sums of its loss and accuracy so far (engine.train_one_epoch)
    best_acc: float = -1.0
    best_epoch: int = None


def _run(args, resume, ctx, replacing=False):
    """The run in steps, each a function below in this order; the run it replaces is set aside,
    and its config written, only once every step that can refuse the run has passed."""
    prepare(args)
    spec, val_combos, train_combo = describe_data(args, ctx)
    model, config = build_model(args, spec, resume, ctx)
    run = Run(args, ctx, spec, config, model, val_combos, train_combo)
    build_criterion(run)
    build_datasets(run, resume)
    state = training_state(run, resume)
    # After the EMA's copy (training_state), which is then evaluated as it is, uncompiled.
    run.net = distribute_and_compile(model, args, ctx)
    if ctx.main:
        earlier_log(os.path.join(args.out, "log.csv"), log_header(run), state.epoch)
        if replacing:  # only now: a refusal above leaves the old run where it was
            set_aside_run(args.out)
        write_atomic(os.path.join(args.out, "config.json"), lambda f: json.dump(resolved(args, config), f, indent=2))
        print(banner(run))
    install_stop_handlers()
    return train_epochs(run, state, resume, replacing)


def prepare(args):
    args.out = args.out or os.path.join("runs", args.model)
    if args.workers is None:
        args.workers = default_workers()
    # cuDNN picks the fastest kernels for the (fixed) input shape, unless results must repeat.
    torch.backends.cudnn.benchmark = not args.deterministic
    if args.deterministic:
        torch.use_deterministic_algorithms(True)


def describe_data(args, ctx):
    """-> (the data's description, the combinations validated, the one trained on or None)."""
    spec = describe_root(args.data_root)
    val_combos = parse_combo_list(args.val_combos, VOCAB)
    train_combo = "".join(parse_combo(args.train_channels, VOCAB)) if args.train_channels else None
    if ctx.main and spec.synthetic:
        print("data: built-in synthetic shapes (no DATA_ROOT configured)")
    distributed.barrier(ctx)
    return spec, val_combos, train_combo


def build_model(args, spec, resume, ctx):
    """-> (the model, its constructor's arguments), with the weights it starts from."""
    config = model_config(args)
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
    check_input_size(model, args.img_size, ctx.device)
    if args.init_from and resume is None:
        init_from(model, args.init_from, spec.classes)
    if resume is not None:
        check_classes(resume, spec.classes)
        load_part(resume, "state_dict", model.load_state_dict)
    if ctx.device.type == "cuda" and args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, config


def build_criterion(run):
    """The loss (labels, then distillation, then the sandwich around them) and the channel
    augmentation, which draws from ``run.chan_gen`` as the sandwich does."""
    args = run.args
    loose = [_flag(k) for k in ("sandwich_packed", "sandwich_stored", "sandwich_delay") if getattr(args, k)]
    if loose and args.channel_aug != "sandwich":
        raise UserError(f"{', '.join(loose)} only change the sandwich; this run trains with --channel-aug "
                        f"{args.channel_aug} (add --channel-aug sandwich or drop them)")
    if args.channel_aug == "sandwich" and run.train_combo:
        raise UserError(f"--train-channels {run.train_combo} trains one fixed combination; "
                        "pass --channel-aug none instead of the sandwich")
    if args.channel_aug == "sandwich" and args.sandwich_packed and not getattr(run.model, "combo_bn", False):
        raise UserError("--sandwich-packed needs BatchNorm statistics per channel set (--combo-bn): one shared "
                        "BatchNorm would mix the statistics of the sets in the packed batch")
    if args.channel_aug == "sandwich" and args.sandwich_packed and args.sandwich_scale < 1:
        raise UserError(f"--sandwich-packed runs every view in one batch: --sandwich-scale {args.sandwich_scale:g} "
                        "cannot be packed (use 1)")
    run.criterion = LabelLoss(args.label_smoothing)
    if args.teacher:
        _, teacher = load_model(args.teacher, run.spec.classes)
        teacher = deploy(teacher).to(run.ctx.device).eval().requires_grad_(False)
        run.criterion = DistillationLoss(run.criterion, teacher, args.kd_alpha, args.kd_temperature)
    run.augment = AUGMENTATIONS.get(args.channel_aug)
    if args.channel_aug == "subset":
        run.augment = functools.partial(run.augment, full_prob=args.full_prob)
    elif args.channel_aug == "sandwich":
        run.criterion = SandwichLoss(run.criterion, args.sandwich_subsets, run.chan_gen, args.sandwich_all_singles,
                                     args.sandwich_fraction, args.sandwich_scale, args.sandwich_every,
                                     args.sandwich_packed)


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
        if isinstance(run.criterion, SandwichLoss):
            run.criterion.steps = scheduler.last_epoch * args.accum_steps  # it is called once a micro-batch
    if isinstance(run.criterion, SandwichLoss):
        # A delay is a share of the epochs the run began with, kept when --epochs extends it.
        run.criterion.start = (resume or {}).get("sandwich_start") or \
            round(args.sandwich_delay * args.epochs * run.steps_per_epoch) * args.accum_steps
        if args.sandwich_stored:
            run.criterion.stored = StoredTargets(len(run.train_set), len(run.spec.classes), run.ctx.device)
            if resume is not None and resume.get("stored_targets"):
                load_part(resume, "stored_targets", run.criterion.stored.load_state_dict)
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


def load_optimizer(optimizer, state):
    """``optimizer.load_state_dict``, which checks the groups' sizes but not the shapes of the
    states it copies (a momentum buffer of another shape would fail at the first step)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise ValueError(f"its {name} of shape {tuple(value.shape)} is for a weight of "
                                     f"shape {tuple(p.shape)}")


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
    aug = args.channel_aug + (f" (full set p={args.full_prob})" if args.full_prob else "")
    if args.channel_aug == "sandwich":
        aug += (f" (every single channel, then {args.sandwich_subsets - 1} drawn reduced set(s), a step)"
                if args.sandwich_all_singles else f" ({args.sandwich_subsets} reduced sets a step)")
        cheaper = [f"{args.sandwich_fraction:g} of the batch" if args.sandwich_fraction < 1 else "",
                   f"{args.sandwich_scale:g} of the side" if args.sandwich_scale < 1 else "",
                   f"on 1 step in {args.sandwich_every}" if args.sandwich_every > 1 else "",
                   "packed in one forward" if args.sandwich_packed else "",
                   "stored full-set targets between" if args.sandwich_stored else "",
                   f"after the first {args.sandwich_delay:g} of the steps" if args.sandwich_delay else ""]
        aug += "".join(f", {c}" for c in cheaper if c)
    aug += f"; initialised from {args.init_from}" if args.init_from else ""
    aug += f", trained on {run.train_combo}" if run.train_combo else ""
    aug += f"; distilled from {args.teacher}" if args.teacher else ""
    aug += "".join(f"; {name} {alpha:g}" for name, alpha in (("MixUp", args.mixup), ("CutMix", args.cutmix)) if alpha)
    aug += f"; EMA of the weights, decay {args.ema:g}" if args.ema else ""
    aug += f"; {args.accum_steps} micro-batches of {args.batch_size} a step" if args.accum_steps > 1 else ""
    return (f"model {args.model} {run.config or ''}: {sum(p.numel() for p in run.model.parameters()):,} params; "
            f"{len(run.train_set)} train / {len(run.val_set)} val images at {args.img_size}px; "
            f"channel aug {aug}; device {run.ctx.device} x{run.ctx.world}; {global_batch(run)}; "
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
            "sandwich_start": getattr(run.criterion, "start", None),
            "rng": rng_state(), "chan_gen": run.chan_gen.get_state(), "lists": run.lists,
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "stored_targets": (run.criterion.stored.state_dict()
                               if getattr(run.criterion, "stored", None) is not None else None)}


LOG_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_acc", "seconds", "train_seconds", "train_distill"]


def train_epochs(run, state, resume, replacing):
    """The epochs left; a stop request (Ctrl-C, SIGTERM) saves last.pt and returns 128 + signal."""
    args, ctx = run.args, run.ctx
    log_path = os.path.join(args.out, "log.csv")
    if ctx.main:
        start_log(log_path, log_header(run), state.epoch)
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
            stats = train_one_epoch(
                run.net, loader, state.optimizer, state.scheduler, ctx, epoch + 1, run.criterion, vocab=VOCAB,
                train_combo=run.train_combo, augment=run.augment, generator=run.chan_gen, amp_dtype=run.amp_dtype,
                scaler=state.scaler, start_step=skip, progress=progress, ema=state.ema, mix=mix,
                total_steps=args.epochs * run.steps_per_epoch, accum_steps=args.accum_steps,
                micro_batches=micro_batches, tally=state.tally if skip else None)
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


def validate(run, state, val_loader, epoch):
    """Accuracy per validated combination (the EMA when there is one); NaN for each on an epoch
    that ``--val-every`` skips (never the last), which then cannot become best.pt."""
    args, ctx = run.args, run.ctx
    if epoch % args.val_every and epoch != args.epochs:
        return {c: float("nan") for c in run.val_combos}
    results = evaluate(state.ema.module if state.ema is not None else run.net, val_loader, ctx, run.val_combos,
                       VOCAB, run.amp_dtype, desc="val (EMA)" if state.ema is not None else "val")
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


if __name__ == "__main__":  # the run needs a task's flags and defaults, which its entry script gives
    print("error: train.py is the training run behind the entry scripts; start it with train_dw.py (Task 1) "
          "or train_rrdb.py (Task 2)", file=sys.stderr)
    sys.exit(2)
