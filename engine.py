"""The one training loop and the one evaluation loop, shared by every model and entry script."""
import contextlib
import math
import time

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from data import build_dataset
from data.channels import select
from data.datasets import normalize
from data.loaders import eval_loader
from utils.distributed import gather_objects
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


def train_one_epoch(model, loader, optimizer, scheduler, ctx, epoch, criterion, *, vocab="RGB",
                    train_combo=None, augment=None, generator=None, amp_dtype=None, scaler=None,
                    start_step=0, stop=StopRequest, progress=None, total_steps=None, ema=None, mix=None,
                    accum_steps=1, micro_batches=None, tally=None):
    """One pass over ``loader``. ``uint8`` batches (or ``EncodedBatch``es, decoded there) go to the
    device first; there they become normalised floats, ``augment(x, names, generator)`` picks
    their channels and ``criterion`` (``losses.py``) yields the loss of each forward pass it
    makes, each back-propagated at once, then one optimizer step.
    Returns ``{"loss", "distill", "acc", "step", "interrupted", "tally"}``, where ``step`` counts
    the batches of this epoch done so far (``start_step`` included), ``loss`` is the mean loss of a
    step's first pass (the labels') and ``distill`` the mean, over the steps that make more passes
    (the sandwich's), of what those passes add (NaN when none did). ``tally`` holds the sums behind
    them; an epoch resumed inside passes the stopped one's back in, so its means cover every step.
    ``progress`` (``utils/progress.py``) hears of every step, with the time spent waiting for data;
    a model with ``set_progress`` (deep training) is told the fraction of ``total_steps`` done;
    ``ema`` (``EMA``) follows the weights after every optimizer step; ``mix(x, y)`` (MixUp/CutMix)
    mixes the normalised batch and turns its labels into class probabilities, which the criteria
    take as targets (training accuracy counts the larger share).
    With ``accum_steps`` N, each batch is a micro-batch: N of them add their gradients (each loss
    divided by N; under DDP only the last all-reduces) into one optimizer step, and ``step``
    counts micro-batches; the epoch ends after ``micro_batches`` of them (the ones that cannot
    fill a step are left out), and a stop waits for the step to be whole."""
    set_progress = getattr(getattr(model, "module", model), "set_progress", None) if total_steps else None
    model.train()
    step = start_step
    total_loss, correct, seen, distill_total, distill_steps = tally or (0.0, 0, 0, 0.0, 0)

    last_micro = True

    def forward(x, names, sync=True):
        # DDP decides at the forward whether the backward all-reduces: a pass that is not the
        # step's last (of its micro-batch, and of the last micro-batch) runs under no_sync, and
        # the last one all-reduces every pass's gradients.
        no_sync = getattr(model, "no_sync", None)
        quiet = no_sync() if not (sync and last_micro) and no_sync else contextlib.nullcontext()
        with quiet, torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return model(x, names).float()

    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if ctx.main else True)
    t_end = time.perf_counter()
    for x, y in bar:
        if micro_batches is not None and step >= micro_batches:
            break
        t_data = time.perf_counter()
        x, y = normalize(x.to(ctx.device, non_blocking=True)), y.to(ctx.device, non_blocking=True)
        if mix is not None:
            x, y = mix(x, y)
        x, names = select(x, train_combo, vocab) if train_combo else (x, tuple(vocab))
        if augment is not None:
            x, names = augment(x, names, generator=generator)
        if getattr(criterion, "wants_indices", False):  # stored targets are kept by image
            criterion.see_batch(loader.sampler.batch_indices(step))
        first_micro, last_micro = step % accum_steps == 0, (step + 1) % accum_steps == 0
        if first_micro:
            optimizer.zero_grad(set_to_none=True)
        logits, passes = None, []
        for loss, out, *parts in criterion(forward, x, names, y):
            value = loss.item()
            if not math.isfinite(value):
                raise UserError(f"non-finite loss ({value}) at epoch {epoch} step {step + 1}; "
                                "training stopped; the checkpoints saved so far are kept")
            loss = loss / accum_steps if accum_steps > 1 else loss
            (scaler.scale(loss) if scaler is not None else loss).backward()
            passes += parts[0] if parts else [value]  # a packed pass names its label and distillation parts
            logits = out if logits is None else logits
        if last_micro:
            optimizer_step(optimizer, scheduler, scaler, ema, model)
            if set_progress is not None:
                set_progress(scheduler.last_epoch / total_steps)
        step += 1
        total_loss += passes[0] * len(y)
        if len(passes) > 1:
            distill_total, distill_steps = distill_total + sum(passes[1:]), distill_steps + 1
        correct += (logits.argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        if progress is not None:
            now = time.perf_counter()
            progress.step(epoch, step, passes[0], scheduler.get_last_lr()[0], len(y) * ctx.world,
                          t_data - t_end, now - t_end)
            t_end = now
        if stop.requested and last_micro:
            break
    return {"loss": total_loss / max(seen, 1),
            "distill": distill_total / distill_steps if distill_steps else float("nan"),
            "acc": correct / max(seen, 1), "step": step, "interrupted": stop.requested,
            "tally": (total_loss, correct, seen, distill_total, distill_steps)}


def optimizer_step(optimizer, scheduler, scaler, ema, model):
    """One update from the gradients gathered, the schedule's next step, the average followed."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update(getattr(model, "module", model))


@torch.no_grad()
def evaluate(model, loader, ctx, combos=("RGB",), vocab="RGB", amp_dtype=None, desc="eval"):
    """Predictions for every channel combination, each batch loaded once.

    Returns ``{combo: (targets, top)}`` as numpy arrays, ``top`` the five best classes of each
    image, best first (``top[:, 0]`` the prediction), gathered over all ranks when distributed
    (each rank evaluates its own shard of the data).
    """
    model.eval()
    preds = {c: [] for c in combos}
    targets = []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None if ctx.main else True):
        x = normalize(x.to(ctx.device, non_blocking=True))
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
                   vocab="RGB", decode="workers"):
    """Metrics rows (one per combination) for ``model`` on a split of the data at ``img_size``, and
    ``evaluate``'s predictions."""
    dataset = build_dataset(spec, split, img_size, limit=limit)
    results = evaluate(model, eval_loader(dataset, batch_size, workers, ctx, decode), ctx, combos, vocab,
                       desc=f"{split} {img_size}px")
    rows = [{"combo": c, "img_size": img_size, "images": len(t),
             **classification_metrics(t, top, len(spec.classes))} for c, (t, top) in results.items()]
    return rows, results


def recalibrate(model, spec, img_size, images, ctx, batch_size=128, workers=2, decode="workers"):
    """Per-channel-set BatchNorm statistics of a Task 1 model from ``images`` training images
    (evenly spaced, evaluation transform), loaded once and reused for every set."""
    if not hasattr(model, "recalibrate"):
        raise UserError("--recalibrate needs a Task 1 model (BatchNorm statistics per channel set)")
    dataset = build_dataset(spec, "train", img_size, limit=images)
    batches = [normalize(x.to(ctx.device)) for x, _ in eval_loader(dataset, batch_size, workers, ctx, decode)]
    model.recalibrate(batches)
    print(f"recalibrated BatchNorm statistics per channel set on {len(dataset)} training images")
    return model
