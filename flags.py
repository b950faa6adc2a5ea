"""The training scripts' command line (``train_dw.py``, ``train_rrdb.py``) and the resume policy:
which flags a resumed run takes from its checkpoint, which it may change, and what a checkpoint
older than a flag trained with."""
import argparse
import ast
import copy
import importlib
import os

import models
from data.loaders import DECODE, DECODE_HELP, default_workers
from optim import DEFAULT_LR, SCHEDULES
from utils.checkpoint import RESUME, check_fields, load_checkpoint
from utils.errors import MAX_EPOCHS, MAX_SEED, MAX_WORKERS, Parser, UserError, at_least, between, img_side, non_empty
from utils.run_folder import run_folder_of

# The share of subset draws that take a single channel, for the models that draw subsets by
# default: the budget sweep's choice at the budget where plain_zero saturates (docs/task1-results.md, from scratch).
# A model left out draws every subset size equally often.
SINGLE_PROB = {"dwg": 0.5}

# Where and how a run goes may change when it is resumed; everything else is its recipe.
SAFE_ON_RESUME = ("out", "workers", "decode", "device", "data_root", "epochs", "log_every", "tensorboard",
                  "compile", "deterministic")

# Recipe flags added after runs had begun, with the value those runs trained with; a checkpoint
# without them resumes with these, not with today's defaults.
BEFORE_FLAG = {"sandwich_fraction": 1.0, "sandwich_every": 1, "opt": "sgd", "sched": "cosine",
               "model_opt": [], "ema": None, "mixup": 0.0, "cutmix": 0.0, "accum_steps": 1,
               "val_every": 1, "single_prob": None}
# Recipe flags the measurements rejected (docs/task1-design.md), at the value that left them off:
# a checkpoint trained with one of them on cannot be resumed by this version.
RETIRED = {"sandwich_packed": False, "sandwich_delay": 0.0, "sandwich_stored": False, "sandwich_scale": 1.0,
           "sandwich_all_singles": False, "full_prob": 0.0, "combo_affine": None}

# The flags several scripts share, each defined here once: one name, meaning and help everywhere.
def add_data_root(p, fallback="."):
    """``--data-root``: $DATA_ROOT, else ``fallback`` ("." the current folder, "synthetic" the built-in
    shapes); any other ``fallback`` names what an evaluation script reads instead (the checkpoint's data)."""
    told = {".": "$DATA_ROOT, else the current folder", "synthetic": "$DATA_ROOT, else the built-in synthetic shapes"}
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", fallback) if fallback in told else None,
                   help="folder with train/val/test.txt and images/, or 'synthetic' "
                        f"(default: {told.get(fallback, fallback)})")


def add_device(p):
    """``--device``, kept as written: "auto" is resolved where the script runs, so a resumed run may move."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when there is one")


def add_workers(p, default=None, what="loader processes per process"):
    p.add_argument("--workers", type=at_least(0, high=MAX_WORKERS), default=default,
                   help=f"{what} (default: the cores minus one, {default_workers()} here)" if default is None
                   else f"{what} (default: {default})")


def add_decode(p):
    p.add_argument("--decode", default="workers", choices=DECODE, help=DECODE_HELP)


def add_limit(p, what="use this many images per split (evenly spaced)"):
    p.add_argument("--limit", type=at_least(1), default=None, help=what)


def add_no_ema(p):
    p.add_argument("--no-ema", dest="ema", action="store_false",
                   help="a run trained with --ema: its raw weights instead of the average")


def add_amp(p):
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision (CUDA only)")


def build_parser(description, default_model, val_combos):
    """The flags of one task's script, in sections: Task 2's command line has none of Task 1's
    model and channel flags (they keep Task 1's inert defaults, so that both tasks share one run)."""
    task = models.registry.model_task(default_model)
    p = Parser(description=description)
    g = {name: p.add_argument_group(name) for name in ("data", "model", "recipe", "channels", "run", "output")}
    add_data_root(g["data"])
    add_workers(g["data"])
    add_decode(g["data"])
    add_limit(g["data"])
    g["model"].add_argument("--model", default=None,
                            help=f"default {default_model}; one of: {', '.join(models.list_models(task))}")
    g["model"].add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE", type=model_option,
                            help="an argument of the model's constructor (repeatable), e.g. widths=64,128,256")
    if task == 1:
        add_task1_flags(g["model"], g["channels"])
    else:  # Task 1's flags at their defaults, read from the flags themselves
        task1 = argparse.ArgumentParser(add_help=False)
        add_task1_flags(task1, task1)
        p.set_defaults(**vars(task1.parse_args([])))
    add_recipe_flags(g["recipe"])
    add_run_flags(g["run"], task, val_combos)
    g["output"].add_argument("--out", default=None, help="run folder (default runs/<model>)")
    g["output"].add_argument("--log-every", type=at_least(1), default=50,
                             help="a progress line every N steps (and at epoch end)")
    g["output"].add_argument("--tensorboard", action="store_true", help="TensorBoard scalars under <out>/tensorboard")
    return p


def add_run_flags(p, task, val_combos):
    """Selection, resuming and the device."""
    p.add_argument("--val-combos", default=val_combos, type=non_empty,
                   help="model selection uses their mean val accuracy" +
                        (" (default with --train-channels: that combination)" if task == 1 else ""))
    p.add_argument("--val-every", type=at_least(1), default=1, metavar="N",
                   help="validate every N-th epoch and the last (best.pt is chosen among them): validating "
                        "many combinations costs as much as training on a small training split")
    p.add_argument("--resume", default=None, help="run folder or checkpoint to continue")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a folder holding another run")
    add_device(p)
    add_amp(p)
    p.add_argument("--channels-last", action="store_true", help="CUDA only")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile what has a fixed shape: a Task 1 model's body (one graph for every "
                        "channel combination), a Task 2 model whole")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (e.g. aot_eager)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume)")


def add_recipe_flags(p):
    """Budget, optimizer, schedule and regularisation: the same for both tasks."""
    p.add_argument("--epochs", type=at_least(1, high=MAX_EPOCHS), default=30, help="the schedule's length")
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
    p.add_argument("--teacher", default=None, help="checkpoint to distil from (e.g. our own ResNet34)")
    p.add_argument("--kd-alpha", type=between(0, 1), default=0.5, help="weight of the distillation loss")
    p.add_argument("--kd-temperature", type=at_least(1e-3, float), default=4.0, help="softens both logits")
    p.add_argument("--seed", type=at_least(0, high=MAX_SEED), default=0, help="weights, data order and augmentation")


def add_task1_flags(p, channels):
    """Task 1's model flags on ``p``, its channel flags on ``channels``."""
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
    channels.add_argument("--channel-aug", default=None, choices=["none", "shuffle", "subset", "dropout", "sandwich"],
                          help="channel augmentation (default: the model's own); sandwich: every step trains "
                               "the full set on labels and --sandwich-subsets reduced sets towards it")
    channels.add_argument("--sandwich-subsets", type=at_least(1), default=2,
                          help="reduced combinations per sandwich step (the first a single channel)")
    channels.add_argument("--sandwich-fraction", type=between(0, 1, low_open=True), default=0.25,
                          help="share of the batch each reduced combination trains on (a different slice each)")
    channels.add_argument("--sandwich-every", type=at_least(1), default=3,
                          help="every N-th step is a sandwich; the others train one sampled combination on the labels")
    by_model = ", ".join(f"{p:g} for {m}" for m, p in SINGLE_PROB.items())
    channels.add_argument("--single-prob", type=single_prob, default=None, metavar="P",
                          help="subset draws (the subset augmentation, the steps between sandwiches) take one "
                               "channel with probability P, else equally any larger set; 'equal': every size "
                               f"equally often (default: {by_model}, equal for the others)")
    channels.add_argument("--train-channels", default=None, type=non_empty,
                          help="train on this fixed combination only, e.g. R")


def single_prob(text):
    """``--single-prob``: a probability, or 'equal' (None: every subset size equally often)."""
    if text.strip().lower() == "equal":
        return None
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability or 'equal', got {text!r}") from None
    return between(0, 1)(text)


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


def given_flags(parser, argv):
    """The destinations of the flags written on this command line (defaults left out)."""
    quiet = copy.deepcopy(parser)
    quiet._defaults = {}  # the other task's inert flags (set_defaults) are written nowhere
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def flag_name(dest):
    return "--" + dest.replace("_", "-")


def flag_value(dest, value):
    """A stored value as the command line writes it."""
    return "equal" if dest == "single_prob" and value is None else str(value)


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
            args.val_combos = args.train_channels.replace(",", "+")  # one set, however its names were joined
        if "single_prob" not in given and args.channel_aug in (None, "subset", "sandwich"):
            args.single_prob = SINGLE_PROB.get(args.model)
        return args, None
    resume = load_checkpoint(args.resume)
    if resume["model"] in models.list_models() and models.registry.model_task(resume["model"]) != task:
        script = "train_dw.py" if task == 2 else "train_rrdb.py"
        raise UserError(f"{resume['path']} is a checkpoint of {resume['model']!r}, a Task {3 - task} model; "
                        f"resume it with {script}")
    if args.model and resume["model"] != args.model:
        raise UserError(f"{resume['path']} is a checkpoint of {resume['model']!r}, not {args.model!r}")
    if "optimizer" not in resume:
        raise UserError(f"{resume['path']} holds weights only and cannot be resumed")
    check_fields(resume, resume["path"], needed=RESUME)
    retired = [k for k, off in RETIRED.items() if resume["args"].get(k, off) not in (off, None, False)]
    if retired:
        raise UserError(f"{resume['path']} trained with {flag_name(retired[0])} "
                        f"{resume['args'][retired[0]]}, a recipe this version no longer has; resume it with the "
                        "version that trained it (docs/task1-design.md names the commit)")
    stored = stored_recipe(parser, resume)
    refused = sorted(k for k in given - {"resume", "model", "overwrite", *SAFE_ON_RESUME}
                     if getattr(args, k) != stored.get(k))
    if refused:
        raise UserError(f"--resume continues {resume['path']} with the recipe it was started with; "
                        f"{', '.join(flag_name(k) for k in refused)} cannot change (start a new run, e.g. with "
                        f"--init-from {resume['path']})")
    changed = {k: getattr(args, k) for k in given & set(SAFE_ON_RESUME) - {"out"}}
    for k, v in changed.items():
        if v != stored.get(k):
            # --epochs stretches the cosine schedule from the step the run has reached
            print(f"resuming {resume['path']} with {flag_name(k)} {v} (was {stored.get(k)})")
    if changed.get("epochs", stored["epochs"]) < resume["epoch"] + (resume["step"] > 0):
        raise UserError(f"--epochs {changed['epochs']}: {resume['path']} has done {resume['epoch']} epoch(s)"
                        f"{' and part of the next' if resume['step'] else ''}; a resume trains on, never back")
    out = args.out if "out" in given else run_folder_of(resume["path"])
    args = argparse.Namespace(**{**stored, **changed, "out": out, "resume": args.resume, "overwrite": args.overwrite})
    return args, resume


def stored_recipe(parser, resume):
    """The flags the checkpoint was trained with (a flag added since at the value runs had before
    it), each one checked as the flag checks the command line: a checkpoint cannot resume a run
    with a value its flag refuses (a batch of 10^9 images, an LR that is a string)."""
    odd = [k for k in resume["args"] if not isinstance(k, str)]
    if odd:
        raise UserError(f"{resume['path']}: field 'args' has the key {odd[0]!r}, not a flag's name; "
                        "a damaged checkpoint")
    for action in parser._actions:
        if action.dest in resume["args"]:
            problem = flag_problem(action, resume["args"][action.dest])
            if problem:
                raise UserError(f"{resume['path']}: field 'args.{action.dest}' {problem}; a damaged checkpoint")
    recipe = {k: v for k, v in resume["args"].items() if k not in RETIRED}
    return {**vars(parser.parse_args([])), **BEFORE_FLAG, **recipe}


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
        return f"is {value!r}, not a value {flag_name(action.dest)} takes"
    if action.choices is not None and value not in action.choices:
        return f"is {value!r}, not one of {', '.join(map(str, action.choices))}"
    try:
        parsed = (action.type or str)(str(value))
    except (argparse.ArgumentTypeError, ValueError) as exc:
        return f"is {value!r}: {exc}"
    if parsed == value and type(parsed) is type(value):
        return None
    return f"is {value!r} ({type(value).__name__}), not what {flag_name(action.dest)} gives"


def recipe_of(script, flags):
    """Every flag of a run that ``script`` (``train_dw.py``, ``train_rrdb.py``) trains with
    ``flags``, filled in as the script fills them in."""
    defaults = importlib.import_module(script.removesuffix(".py")).DEFAULTS
    parser = build_parser("", **defaults)
    args, _ = resolve_args(parser.parse_args(flags), given_flags(parser, flags), parser, defaults["default_model"])
    return vars(args)


def model_config(args):
    """The constructor's arguments: Task 1's flags, then every ``--model-opt``."""
    config = {}
    if models.registry.model_task(args.model) == 1:
        options = {"base": args.stem_base, "combo_bn": args.combo_bn}
        config = {"backbone": args.backbone, "pretrained": args.pretrained,
                  **{k: v for k, v in options.items() if v is not None}}
    return {**config, **dict(args.model_opt)}


def resolved(args, config):
    """The run's flags with those left to the model (``None``) at the values the model took."""
    if models.registry.model_task(args.model) != 1:
        return vars(args)
    took = models.registry.resolved_config(args.model, **config)
    flags = {"stem_base": "base", "combo_bn": "combo_bn"}
    return {**vars(args), **{f: took.get(k) for f, k in flags.items() if getattr(args, f) is None}}


def describe_recipe(args):
    """The channel augmentation and the recipe's options, as the run's banner says them."""
    aug = args.channel_aug
    aug += f" (a single channel p={args.single_prob:g})" if args.single_prob is not None else ""
    if args.channel_aug == "sandwich":
        cheaper = [f"{args.sandwich_fraction:g} of the batch" if args.sandwich_fraction < 1 else "",
                   f"on 1 step in {args.sandwich_every}" if args.sandwich_every > 1 else ""]
        aug += f" ({args.sandwich_subsets} reduced sets a step" + "".join(f", {c}" for c in cheaper if c) + ")"
    aug += f"; pretrained {args.pretrained}" if getattr(args, "pretrained", None) else ""
    aug += f"; initialised from {args.init_from}" if args.init_from else ""
    aug += f", trained on {args.train_channels}" if args.train_channels else ""
    aug += f"; distilled from {args.teacher}" if args.teacher else ""
    aug += "".join(f"; {name} {alpha:g}" for name, alpha in (("MixUp", args.mixup), ("CutMix", args.cutmix)) if alpha)
    aug += f"; EMA of the weights, decay {args.ema:g}" if args.ema else ""
    aug += f"; {args.accum_steps} micro-batches of {args.batch_size} a step" if args.accum_steps > 1 else ""
    return aug
