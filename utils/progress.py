"""Training progress as plain text lines (they survive nohup and SLURM logs, where a tqdm bar
prints nothing), with throughput, the share of time spent waiting for data and the ETA of the
whole run; optionally the same scalars in TensorBoard."""
import datetime

from tqdm import tqdm


def _eta(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    """Counts steps of the whole run. ``step`` is called after every optimizer step, ``evaluated``
    after every validation pass; a line is printed every ``every`` steps of an epoch."""

    def __init__(self, epochs, steps_per_epoch, start_epoch=0, start_step=0, every=50,
                 tensorboard_dir=None, enabled=True):
        self.epochs, self.steps_per_epoch, self.every, self.enabled = epochs, steps_per_epoch, every, enabled
        self.remaining_steps = (epochs - start_epoch) * steps_per_epoch - start_step
        self.remaining_evals = epochs - start_epoch
        self.step_seconds = self.eval_seconds = None  # running means of this run
        self.steps_timed = self.evals_timed = 0
        self.writer = None
        if tensorboard_dir and enabled:
            from torch.utils.tensorboard import SummaryWriter  # only when asked: needs tensorboard
            # purge_step drops events a killed run wrote after the checkpoint it resumes from
            self.writer = SummaryWriter(tensorboard_dir, purge_step=start_epoch * steps_per_epoch + start_step)
        self.start_epoch()

    def start_epoch(self):
        self.images = 0
        self.data_seconds = self.busy_seconds = 0.0
        self.window = [0, 0.0, 0.0, 0.0]  # images, data seconds, total seconds, loss x images since the last line

    def eta(self):
        steps = self.remaining_steps * (self.step_seconds or 0.0)
        return steps + self.remaining_evals * (self.eval_seconds or 0.0)

    def step(self, epoch, step, loss, lr, images, data_seconds, step_seconds):
        """``step`` counts this epoch's steps from 1; ``step_seconds`` includes ``data_seconds``."""
        self.remaining_steps -= 1
        self.steps_timed += 1
        mean = self.step_seconds or step_seconds
        self.step_seconds = mean + (step_seconds - mean) / self.steps_timed
        self.images += images
        self.data_seconds += data_seconds
        self.busy_seconds += step_seconds
        w = self.window
        w[0] += images
        w[1] += data_seconds
        w[2] += step_seconds
        w[3] += loss * images
        if not self.enabled or (step % self.every and step != self.steps_per_epoch):
            return
        rate, wait = w[0] / max(w[2], 1e-9), w[1] / max(w[2], 1e-9)
        tqdm.write(f"epoch {epoch}/{self.epochs} step {step}/{self.steps_per_epoch}  loss {w[3] / w[0]:.3f}  "
                   f"lr {lr:.4g}  {rate:.0f} img/s  data wait {wait:.0%}  eta {_eta(self.eta())}")
        if self.writer is not None:
            global_step = (epoch - 1) * self.steps_per_epoch + step
            for tag, value in (("loss", w[3] / w[0]), ("lr", lr), ("images_per_s", rate), ("data_wait", wait)):
                self.writer.add_scalar(f"train/{tag}", value, global_step)
        self.window = [0, 0.0, 0.0, 0.0]

    def summary(self):
        """``images/s, data wait`` of the epoch so far, for the end-of-epoch line."""
        busy = max(self.busy_seconds, 1e-9)
        return f"{self.images / busy:.0f} img/s, data wait {self.data_seconds / busy:.0%}"

    def evaluated(self, epoch, seconds, scalars):
        """After a validation pass: ``scalars`` (tag -> value) go to TensorBoard."""
        self.remaining_evals -= 1
        self.evals_timed += 1
        mean = self.eval_seconds or seconds
        self.eval_seconds = mean + (seconds - mean) / self.evals_timed
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, epoch * self.steps_per_epoch)
            self.writer.flush()
        self.start_epoch()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()
