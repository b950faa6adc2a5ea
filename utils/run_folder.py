"""A run folder belongs to one run: one live process at a time (a lock file), no temporary files
left by a killed save, ``best.pt`` in agreement with ``last.pt`` about the best epoch, and a
``log.csv`` of the epochs its checkpoint holds."""
import csv
import glob
import os
import shutil
import socket
import time

from .checkpoint import load_checkpoint
from .errors import UserError
from .files import write_atomic
from .validate import log_row, read_log

RUN_FILES = ("last.pt", "best.pt", "log.csv")
REPLACED = (*RUN_FILES, "config.json", "curves.png", "tensorboard")  # what --overwrite replaces
LOCK = "lock"
STALE_SECONDS = 10  # an unreadable lock older than this is no live writer's
LOG_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_acc", "seconds", "train_seconds", "train_distill"]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``<folder>/lock`` holds ``<pid> <host>`` while a training process writes the folder.

    A second process is refused; a lock whose process is gone (SIGKILL, a crash) is taken over.
    """

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK)
        self.held = False

    def acquire(self):
        me = f"{os.getpid()} {socket.gethostname()}"
        if os.path.isdir(self.path):
            raise UserError(f"{self.path} is a folder where the run's lock file goes; move it away")
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(me)
            except OSError as exc:  # a full disk: an empty lock left behind would block every later run
                os.remove(self.path)
                raise UserError(f"cannot write the lock {self.path}: {exc.strerror or exc}") from None
            self.held = True
            return self
        raise UserError(f"cannot lock {self.path}: another process took it first")

    def _take_over_if_stale(self):
        try:
            with open(self.path) as f:
                pid, _, host = f.read().strip().partition(" ")
        except FileNotFoundError:
            return
        folder = os.path.dirname(self.path)
        if not pid.isdigit() and time.time() - os.path.getmtime(self.path) > STALE_SECONDS:
            # A lock is written whole the moment it is made: an empty or garbled one is a leftover.
            print(f"taking over a lock that names no process ({self.path})")
            os.remove(self.path)
            return
        if host != socket.gethostname():
            raise UserError(f"{folder} is locked by process {pid} on {host} ({self.path}); "
                            "delete the lock file if that run is over")
        if pid.isdigit() and _alive(int(pid)):
            raise UserError(f"{folder} is in use by process {pid} ({self.path}); "
                            "wait for it or stop it, or pass another --out")
        print(f"taking over the lock of process {pid}, which is gone ({self.path})")
        os.remove(self.path)

    def release(self):
        if self.held and os.path.exists(self.path):
            os.remove(self.path)
        self.held = False


def remove_stray_temporaries(folder):
    """Temporary files of a save that was killed (``save_atomic``'s ``.tmp-*``): never a checkpoint."""
    stray = glob.glob(os.path.join(folder, ".tmp-*"))
    for path in stray:
        os.remove(path)
    if stray:
        print(f"removed {len(stray)} temporary file(s) left by a killed save in {folder}")


def reconcile_best(folder):
    """A kill between writing ``last.pt`` and ``best.pt`` leaves ``best.pt`` an epoch behind what
    ``last.pt`` records as best; at that moment ``last.pt`` *is* the best checkpoint, so copy it."""
    last_path, best_path = os.path.join(folder, "last.pt"), os.path.join(folder, "best.pt")
    if not os.path.exists(last_path):
        return
    last = load_checkpoint(last_path)
    best_epoch = last.get("best_epoch")
    if best_epoch is None or best_epoch != last["epoch"] or last["step"]:
        return
    if os.path.exists(best_path) and load_checkpoint(best_path)["epoch"] == best_epoch:
        return
    tmp = os.path.join(folder, ".tmp-best.pt")
    shutil.copyfile(last_path, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, best_path)
    print(f"best.pt restored from last.pt (epoch {best_epoch}, the best; a kill came between the two writes)")


def check_out_dir(out, continuing, overwrite):
    """``out`` must not hold another run unless ``continuing`` it (resume) or ``overwrite``."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder")
    entries = os.listdir(out) if os.path.isdir(out) else []
    has_run = any(n in RUN_FILES for n in entries)  # else even a config.json is someone else's
    foreign = sorted(n for n in entries
                     if not (_ours(n) if has_run else n in (LOCK, PREVIOUS) or n.startswith(".tmp-"))
                     or (n == PREVIOUS and not _real_folder(os.path.join(out, n))))  # ours is a folder
    if foreign and not continuing:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"--out {out} holds files that are no run's ({shown}); a run never writes over them "
                        "(--overwrite replaces a run, not a folder): choose another --out")
    existing = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if existing == ["log.csv"] and _header_only(os.path.join(out, "log.csv")):
        print(f"{out}/log.csv holds no epoch and no checkpoint beside it (a run that stopped in its first "
              "epoch): the new run replaces it")
        existing = []
    if existing and not continuing and not overwrite:
        raise UserError(f"{out} already holds a run ({', '.join(existing)}); "
                        "pass --resume to continue it, --overwrite to replace it, or another --out")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".tmp-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"cannot write into --out {out}: {exc.strerror}") from None


def _derived(name):
    """Whether a run folder's entry is what the scripts that read the run wrote there: evaluations
    (test_dw.py, test_rrdb.py, the results driver) and exports."""
    return name in ("eval", "export") or name.startswith(("eval-", "compare-"))


def _ours(name):
    """Whether a run folder's entry is one a run (or the scripts that read it) writes."""
    return name in (*REPLACED, LOCK, PREVIOUS) or name.startswith(".tmp-") or _derived(name)


def _real_folder(path):
    return os.path.isdir(path) and not os.path.islink(path)


def _header_only(path):
    """Whether ``path`` is the log.csv of a run that stopped in its first epoch: one line, the
    header a run writes (``log_header``), and nothing else; anything more is a user's file."""
    try:
        if os.path.getsize(path) > 1 << 16:
            return False
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError:  # a folder, say: it is no leftover of ours
        return False
    return len(lines) == 1 and lines[0].startswith(b",".join(w.encode() for w in LOG_COLUMNS[:5]))


PREVIOUS = ".previous-run"  # where --overwrite keeps the old run until the new one has a checkpoint


def set_aside_run(folder):
    """``--overwrite``: the previous run's files move into ``folder/.previous-run``, so that none
    of them passes for the new run's; they are deleted at the new run's first checkpoint
    (``discard_previous_run``) and moved back if it fails before (``restore_previous_run``)."""
    previous = os.path.join(folder, PREVIOUS)
    if os.path.isdir(previous) and not os.path.exists(os.path.join(folder, "last.pt")):
        # A replacement killed before its first checkpoint: the run set aside then is still the one
        # to keep, and what stands beside it (a config, a log without epochs) is that attempt's.
        _remove(folder, REPLACED)
        return
    shutil.rmtree(previous, ignore_errors=True)
    os.makedirs(previous)
    # its evaluations and exports too: they describe the old weights, not the new run's
    for name in (*REPLACED, *filter(_derived, os.listdir(folder))):
        if os.path.lexists(os.path.join(folder, name)):
            os.replace(os.path.join(folder, name), os.path.join(previous, name))


def discard_previous_run(folder):
    shutil.rmtree(os.path.join(folder, PREVIOUS), ignore_errors=True)


def restore_previous_run(folder):
    """The new run failed before its first checkpoint: its files go, the previous run's come back."""
    previous = os.path.join(folder, PREVIOUS)
    if not os.path.isdir(previous):
        return
    _remove(folder, REPLACED)
    for name in os.listdir(previous):
        os.replace(os.path.join(previous, name), os.path.join(folder, name))
    os.rmdir(previous)


def remove_unfinished_run(folder):
    """A run that made ``folder`` and failed before its first checkpoint leaves nothing behind."""
    if os.path.exists(os.path.join(folder, "last.pt")):
        return
    _remove(folder, (*REPLACED, LOCK))
    try:
        os.rmdir(folder)
    except OSError:  # something else was put there meanwhile: it stays
        pass


def _remove(folder, names):
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def run_folder_of(path):
    """The run folder of a checkpoint file; "." for a bare file name (resuming from inside it)."""
    return os.path.dirname(path) or "."


def claim_run_folder(out, resume, overwrite):
    """Check, lock and tidy the run folder before anything is written; -> (the held lock, whether
    the run replaces another one there: ``--overwrite``, acted on at the first write)."""
    continuing = resume is not None and os.path.isdir(out) and os.path.samefile(out, run_folder_of(resume["path"]))
    check_out_dir(out, continuing, overwrite)
    lock = RunLock(out).acquire()
    remove_stray_temporaries(out)
    if continuing:
        reconcile_best(out)
    if resume is not None and not continuing:  # the log so far travels with the run
        old_log = os.path.join(run_folder_of(resume["path"]), "log.csv")
        if os.path.isfile(old_log):
            shutil.copyfile(old_log, os.path.join(out, "log.csv"))
    return lock, overwrite and not continuing


def log_header(val_combos):
    return [*LOG_COLUMNS[:5], *[f"val_acc_{c}" for c in val_combos], *LOG_COLUMNS[5:]]


def start_log(path, header, epochs_done):
    """A fresh log, or the old one cut back to the epochs the resumed checkpoint holds (a kill
    between the log line and the checkpoint would otherwise leave a row twice)."""
    rows = earlier_log(path, header, epochs_done, say=True)
    write_atomic(path, lambda f: csv.writer(f).writerows([header, *rows]))


def earlier_log(path, header, epochs_done, say=False):
    """The rows of the log at ``path`` that a run with ``epochs_done`` keeps; a log that cannot
    be read is one line (the run reads it before anything is written, to say so in time)."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder where the run's log goes; move it away")
    if not epochs_done or not os.path.exists(path):
        return []
    old, rows = read_log(path)
    if old != header and set(old) <= set(header) and "epoch" in old:
        # A log written before a column was added: its rows keep their values, "nan" for the new ones.
        if say:
            print(f"{path}: the log gains the column(s) {', '.join(c for c in header if c not in old)}; "
                  "earlier epochs have nan there")
        rows = [[dict(zip(old, r)).get(c, "nan") for c in header] if len(r) == len(old) else r for r in rows]
    # Blank or cut lines (a kill mid-line, an editor's trailing newline) are no epoch's.
    return [r for r in rows if log_row(r, header, epochs_done)]
