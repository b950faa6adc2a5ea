"""The optimizer, its learning-rate schedule and mixed precision's loss scaler."""
import math
import warnings

import torch

from models.norm import ComboBatchNorm2d
from utils.errors import UserError

DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}  # the peak learning rate when --lr is not given


SCHEDULES = {"cosine": "warm-up, then cosine decay to 0", "step": "warm-up, then x0.1 at 1/2 and 3/4 of the steps",
             "constant": "warm-up, then the peak LR to the end"}


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


def amp_settings(args, ctx):
    if ctx.device.type != "cuda":
        for flag, on in (("--amp", args.amp != "off"), ("--channels-last", args.channels_last)):
            if on:
                warnings.warn(f"{flag} is ignored on CPU", stacklevel=2)
        return None, None
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    return dtype, scaler


def load_optimizer(optimizer, state):
    """``optimizer.load_state_dict``, which checks the groups' sizes but not the shapes of the
    states it copies (a momentum buffer of another shape would fail at the first step), nor the
    kinds of the hyperparameters (a momentum that is a string would fail there too)."""
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        for key, value in group.items():
            numeric = _kind(value).startswith(("finite", "sequence of finite"))
            if numeric and key in saved and _kind(saved[key]) != _kind(value):
                raise ValueError(f"its {key} {saved[key]!r} is not a {_kind(value)} as this optimizer's")
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise ValueError(f"its {name} of shape {tuple(value.shape)} is for a weight of "
                                     f"shape {tuple(p.shape)}")


def _kind(value):
    """What an optimizer hyperparameter is, as far as the step's arithmetic cares (the numbers
    are checked; flags such as ``foreach`` may differ between torch versions)."""
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "finite number" if math.isfinite(value) else "non-finite number"
    if isinstance(value, (list, tuple)):
        return "sequence of " + ", ".join(_kind(v) for v in value)
    return type(value).__name__
