"""The one training loop and the one evaluation loop, shared by every model and entry script."""
import argparse
import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from data import DEFAULT_VOCAB, DataSpec, build_dataset
from data.channels import select
from data.datasets import normalize
from data.loaders import eval_loader
from utils.distributed import Context, gather_objects
from utils.errors import UserError
from utils.metrics import classification_metrics


class EMA:
    """An exponential moving average of a model's weights (``torch.optim.swa_utils.AveragedModel``),
    BatchNorm's running statistics averaged with them; integer buffers (BatchNorm's step counters,
    which channel sets a model has seen) are copied, since an average of them means nothing."""

    def __init__(self, model, decay):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self):
        return self.averaged.module

    @torch.no_grad()
    def update(self, model):
        self.averaged.update_parameters(model)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            if not mine.is_floating_point():
                mine.copy_(theirs)

    def state_dict(self):
        return {"state_dict": self.module.state_dict(), "n_averaged": int(self.averaged.n_averaged)}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["state_dict"])
        self.averaged.n_averaged.fill_(state["n_averaged"])


class StopRequest:
    """Set by a SIGINT/SIGTERM handler; the loop finishes its step and returns."""
    requested = False
    signum = 0

    @classmethod
    def install_handlers(cls):
        def handler(signum, frame):
            if cls.requested:  # a second signal: give up at once
                sys.exit(128 + signum)
            cls.requested, cls.signum = True, signum
            print(f"\n{signal.Signals(signum).name}: finishing this step, then saving last.pt", file=sys.stderr)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _one_epoch_budget():
    return argparse.Namespace(epochs=1, accum_steps=1)


@dataclass
class Run:
    """What the epochs of a run work with, built by the steps of ``train.run_steps``; the loop
    (``train_one_epoch``) reads the networks, the criterion, the channel choices and the budget."""
    model: torch.nn.Module  # the weights that are saved
    criterion: torch.nn.Module = None
    args: argparse.Namespace = field(default_factory=_one_epoch_budget)  # the loop reads epochs, accum_steps
    ctx: Context = field(default_factory=Context)
    spec: DataSpec = None
    config: dict = None  # the model constructor's arguments, as the checkpoints store them
    val_combos: list = None
    train_combo: str = None  # --train-channels, canonical
    net: torch.nn.Module = None  # what trains: the model, wrapped for several processes and compiled
    augment: object = None  # the channel augmentation
    chan_gen: torch.Generator = field(default_factory=torch.Generator)  # re-seeded every epoch
    train_set: torch.utils.data.Dataset = None
    val_set: torch.utils.data.Dataset = None
    lists: dict = None  # list_fingerprint of the splits
    steps_per_epoch: int = 0  # optimizer steps; 0: as many as the loader gives
    amp_dtype: torch.dtype = None

    def __post_init__(self):
        if self.net is None:
            self.net = self.model


@dataclass
class State:
    """What changes as a run trains, and what a checkpoint saves besides the weights."""
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object = None
    ema: EMA = None
    epoch: int = 0  # epochs done
    step: int = 0  # micro-batches of the next epoch done (a stop inside it)
    tally: tuple = None  # and the sums of its loss and accuracy so far (``train_one_epoch``)
    best_acc: float = -1.0
    best_epoch: int = None


def train_one_epoch(run, state, loader, epoch, *, mix=None, progress=None, start_step=0, stop=StopRequest):
    """One pass over ``loader`` (epoch number ``epoch``, from 1) with ``run``'s network and
    criterion, ``state``'s optimizer, schedule, loss scaler and EMA. ``uint8`` batches (or
    ``EncodedBatch``es, decoded there) go to the device first; there they become normalised floats,
    ``run.augment(x, names, generator)`` picks their channels and ``run.criterion`` (``losses.py``)
    yields the loss of each forward pass it makes, each back-propagated at once, then one optimizer
    step. Returns ``{"loss", "distill", "acc", "step", "interrupted", "tally"}``, where ``step``
    counts the batches of this epoch done so far (``start_step`` included), ``loss`` is the mean
    loss of a step's first pass (the labels') and ``distill`` the mean, over the steps that make
    more passes (the sandwich's), of what those passes add (NaN when none did). ``tally`` holds the
    sums behind them; an epoch resumed inside starts from ``state.tally``, so its means cover every
    step. ``progress`` (``utils/progress.py``) hears of every step, with the time spent waiting for
    data; a model with ``set_progress`` (deep training) is told the fraction of the run's steps
    done; ``mix(x, y)`` (MixUp/CutMix) mixes the normalised batch and turns its labels into class
    probabilities, which the criteria take as targets (training accuracy counts the larger share).
    With ``--accum-steps`` N, each batch is a micro-batch: N of them add their gradients (each loss
    divided by N; under DDP only the last all-reduces) into one optimizer step, and ``step``
    counts micro-batches; the epoch ends after ``run.steps_per_epoch`` x N of them (the ones that
    cannot fill a step are left out), and a stop waits for the step to be whole."""
    accum, ctx = run.args.accum_steps, run.ctx
    micro_batches = run.steps_per_epoch * accum or None
    total_steps = run.args.epochs * run.steps_per_epoch
    set_progress = getattr(getattr(run.net, "module", run.net), "set_progress", None) if total_steps else None
    run.net.train()
    step = start_step
    tally = list(state.tally if start_step and state.tally else (0.0, 0, 0, 0.0, 0))
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if ctx.main else True)
    t_end = time.perf_counter()
    for x, y in bar:
        if micro_batches is not None and step >= micro_batches:
            break
        t_data = time.perf_counter()
        x, names, y = device_batch(run, x, y, mix)
        last_micro = (step + 1) % accum == 0
        if step % accum == 0:
            state.optimizer.zero_grad(set_to_none=True)
        logits, passes = backward_passes(run, state, x, names, y, f"epoch {epoch} step {step + 1}", last_micro)
        if last_micro:
            optimizer_step(state, run.net)
            if set_progress is not None:
                set_progress(state.scheduler.last_epoch / total_steps)
        step += 1
        add_to_tally(tally, passes, logits, y)
        bar.set_postfix(loss=f"{tally[0] / tally[2]:.3f}", acc=f"{tally[1] / tally[2]:.3f}")
        if progress is not None:
            now = time.perf_counter()
            progress.step(epoch, step, passes[0], state.scheduler.get_last_lr()[0], len(y) * ctx.world,
                          t_data - t_end, now - t_end)
            t_end = now
        if stop.requested and last_micro:
            break
    total_loss, correct, seen, distill_total, distill_steps = tally
    return {"loss": total_loss / max(seen, 1),
            "distill": distill_total / distill_steps if distill_steps else float("nan"),
            "acc": correct / max(seen, 1), "step": step, "interrupted": stop.requested, "tally": tuple(tally)}


def device_batch(run, x, y, mix):
    """A loaded batch on the device, normalised, mixed, with the channels this step trains on."""
    stats, bands = (run.spec.stats, run.spec.bands) if run.spec is not None else (None, DEFAULT_VOCAB)
    x = normalize(x.to(run.ctx.device, non_blocking=True), stats)
    y = y.to(run.ctx.device, non_blocking=True)
    if mix is not None:
        x, y = mix(x, y)
    x, names = select(x, run.train_combo, bands) if run.train_combo else (x, tuple(bands))
    if run.augment is not None:
        x, names = run.augment(x, names, generator=run.chan_gen)
    return x, names, y


def backward_passes(run, state, x, names, y, where, last_micro):
    """Every forward pass the criterion makes on the batch, each back-propagated at once;
    -> (the first pass's logits, the loss of each pass)."""
    net, ctx, accum = run.net, run.ctx, run.args.accum_steps

    def forward(x, names, sync=True):
        # DDP decides at the forward whether the backward all-reduces: a pass that is not the
        # step's last (of its micro-batch, and of the last micro-batch) runs under no_sync, and
        # the last one all-reduces every pass's gradients.
        no_sync = getattr(net, "no_sync", None)
        quiet = no_sync() if not (sync and last_micro) and no_sync else contextlib.nullcontext()
        with quiet, torch.autocast(ctx.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            return net(x, names).float()

    logits, passes = None, []
    for loss, out in run.criterion(forward, x, names, y):
        value = loss.item()
        if not math.isfinite(value):
            raise UserError(f"non-finite loss ({value}) at {where}; training stopped; "
                            "the checkpoints saved so far are kept")
        loss = loss / accum if accum > 1 else loss
        (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
        passes.append(value)
        logits = out if logits is None else logits
    return logits, passes


def add_to_tally(tally, passes, logits, y):
    """The epoch's sums: the labels' loss, correct and seen images, and the sandwich's passes."""
    tally[0] += passes[0] * len(y)
    tally[1] += (logits.argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum().item()
    tally[2] += len(y)
    if len(passes) > 1:
        tally[3] += sum(passes[1:])
        tally[4] += 1


def optimizer_step(state, net):
    """One update from the gradients gathered, the schedule's next step, the average followed."""
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update(getattr(net, "module", net))


@torch.no_grad()
def evaluate(model, loader, ctx, combos=("RGB",), vocab=DEFAULT_VOCAB, amp_dtype=None, desc="eval", stats=None):
    """Predictions for every channel combination, each batch loaded once (``vocab``: the data's
    bands, in order; ``stats`` a multi-band root's, for ``normalize``).

    Returns ``{combo: (targets, top)}`` as numpy arrays, ``top`` the five best classes of each
    image, best first (``top[:, 0]`` the prediction), gathered over all ranks when distributed
    (each rank evaluates its own shard of the data).
    """
    model.eval()
    preds = {c: [] for c in combos}
    targets = []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None if ctx.main else True):
        x = normalize(x.to(ctx.device, non_blocking=True), stats)
        targets.append(y.numpy())
        for combo in combos:
            xc, names = select(x, combo, vocab)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(xc, names)
            preds[combo].append(logits.topk(min(5, logits.shape[1]), 1).indices.cpu().numpy())
    local = (np.concatenate(targets), {c: np.concatenate(p) for c, p in preds.items()})
    shards = gather_objects(local, ctx)
    all_targets = np.concatenate([t for t, _ in shards])
    return {c: (all_targets, np.concatenate([p[c] for _, p in shards])) for c in combos}


def evaluate_split(model, spec, split, img_size, combos, ctx, batch_size=128, workers=2, limit=None,
                   decode="workers"):
    """Metrics rows (one per combination) for ``model`` on a split of the data at ``img_size``, and
    ``evaluate``'s predictions."""
    dataset = build_dataset(spec, split, img_size, limit=limit)
    results = evaluate(model, eval_loader(dataset, batch_size, workers, ctx, decode), ctx, combos, spec.bands,
                       desc=f"{split} {img_size}px", stats=spec.stats)
    rows = [{"combo": c, "img_size": img_size, "images": len(t),
             **classification_metrics(t, top, len(spec.classes))} for c, (t, top) in results.items()]
    return rows, results
