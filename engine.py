"""The one training loop and the one evaluation loop, shared by every model and entry script."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import build_dataset
from data.channels import select
from data.loaders import eval_loader
from utils.distributed import gather_objects
from utils.errors import UserError
from utils.metrics import classification_metrics


class StopRequest:
    """Set by a SIGINT/SIGTERM handler; the loop finishes its step and returns."""
    requested = False


def train_one_epoch(model, loader, optimizer, scheduler, ctx, epoch, *, vocab="RGB",
                    train_combo=None, augment=None, generator=None, amp_dtype=None, scaler=None,
                    label_smoothing=0.0, start_step=0, stop=StopRequest, teacher=None, kd_alpha=0.5,
                    kd_temperature=4.0):
    """One pass over ``loader``; ``augment(x, names, generator)`` transforms each batch's channels.
    With a ``teacher``, the loss mixes in knowledge distillation (Hinton et al.): ``kd_alpha`` of
    it is the KL divergence to the teacher's softened outputs at ``kd_temperature``.
    Returns ``{"loss", "acc", "step", "interrupted"}``, where ``step`` counts the batches of
    this epoch done so far (``start_step`` included)."""
    model.train()
    total_loss, correct, seen, step = 0.0, 0, 0, start_step
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if ctx.main else True)
    for x, y in bar:
        x, names = select(x, train_combo, vocab) if train_combo else (x, tuple(vocab))
        if augment is not None:
            x, names = augment(x, names, generator=generator)
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x, names)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    target = F.log_softmax(teacher(x, names).float() / kd_temperature, 1)
                kd = F.kl_div(F.log_softmax(logits.float() / kd_temperature, 1), target, log_target=True,
                              reduction="batchmean") * kd_temperature ** 2
                loss = (1 - kd_alpha) * loss + kd_alpha * kd
        if not math.isfinite(loss.item()):
            raise UserError(f"non-finite loss ({loss.item()}) at epoch {epoch} step {step + 1}; "
                            "training stopped, the last good checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        step += 1
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        if stop.requested:
            break
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1), "step": step,
            "interrupted": stop.requested}


@torch.no_grad()
def evaluate(model, loader, ctx, combos=("RGB",), vocab="RGB", amp_dtype=None, desc="eval"):
    """Predictions for every channel combination, each batch loaded once.

    Returns ``{combo: (targets, preds)}`` as numpy arrays, gathered over all ranks when
    distributed (each rank evaluates its own shard of the data).
    """
    model.eval()
    preds = {c: [] for c in combos}
    targets = []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None if ctx.main else True):
        x = x.to(ctx.device, non_blocking=True)
        targets.append(y.numpy())
        for combo in combos:
            xc, names = select(x, combo, vocab)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                preds[combo].append(model(xc, names).argmax(1).cpu().numpy())
    local = (np.concatenate(targets), {c: np.concatenate(p) for c, p in preds.items()})
    shards = gather_objects(local, ctx)
    all_targets = np.concatenate([t for t, _ in shards])
    return {c: (all_targets, np.concatenate([p[c] for _, p in shards])) for c in combos}


def evaluate_split(model, spec, split, img_size, combos, ctx, batch_size=128, workers=2, limit=None,
                   vocab="RGB"):
    """Metrics rows (one per combination) for ``model`` on a split of the data at ``img_size``."""
    dataset = build_dataset(spec, split, img_size, limit=limit)
    results = evaluate(model, eval_loader(dataset, batch_size, workers, ctx), ctx, combos, vocab,
                       desc=f"{split} {img_size}px")
    return [{"combo": c, "img_size": img_size, "images": len(t),
             **classification_metrics(t, p, len(spec.classes))} for c, (t, p) in results.items()]
