"""Running the jobs: training runs (resumed or reused when finished) and evaluations (reused when
newer than their checkpoints), several at once."""
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from flags import BEFORE_FLAG, flag_name, flag_value
from utils.checkpoint import RESUME, check_fields, load_checkpoint
from utils.errors import UserError
from utils.validate import file_field, read_rows

from .rows import SIZE_ROWS, SIZES, row_combos, row_runs, run_dir, trained_dir, trained_recipe


class Children:
    """The scripts running now, and the stop signal (if any) forwarded to them."""
    running = set()
    stopped = 0


def forward_stop_signals():
    """SIGINT/SIGTERM to the driver go to each running script once (each runs in a session of its
    own, so a signal to the driver's process group does not reach it twice); each then finishes
    its step and saves last.pt, and the driver waits for them."""
    def handler(signum, frame):
        if not Children.stopped:
            print(f"\n{signal.Signals(signum).name}: passed to the running scripts; waiting for them to save",
                  file=sys.stderr, flush=True)
        Children.stopped = signum
        for proc in list(Children.running):
            proc.send_signal(signum)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def sh(*cmd, threads=None):
    if Children.stopped:
        raise SystemExit(128 + Children.stopped)
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    proc = subprocess.Popen([sys.executable, *cmd], env=env, start_new_session=True)
    Children.running.add(proc)
    try:
        code = proc.wait()
    finally:
        Children.running.discard(proc)
    if Children.stopped:
        raise SystemExit(128 + Children.stopped)
    if code:
        raise UserError(f"{' '.join(cmd[:3])} ... exited with status {code} (its error is above); finished runs "
                        "are kept and the same command resumes the rest")


def finished_run(run):
    """Whether ``run``'s folder holds it, finished; a run there with another recipe is refused."""
    return run_finished(run.out, run.script, [*run.common, *run.extra])


def train(run, threads=None):
    """Train ``run`` unless a finished run is already in its folder; resume an unfinished one."""
    if finished_run(run):
        return
    if os.path.exists(os.path.join(run.out, "last.pt")):
        sh(run.script, "--resume", run.out, threads=threads)
    else:
        sh(run.script, *run.common, *run.extra, "--out", run.out, "--overwrite", threads=threads)


def train_runs(args, runs):
    """Train ``runs`` (each folder once), ``--jobs`` at a time in that order; a run that starts
    from or distils from another (``after``) waits for it."""
    runs = list({r.out: r for r in runs}.values())
    # Finished runs are checked first, so that "k of N" and the estimate count only runs that train.
    left = [r for r in runs if not finished_run(r)]
    if len(left) < len(runs):
        print(f"{len(runs) - len(left)} of {len(runs)} runs already finished, reused", flush=True)
    done = {r.out: threading.Event() for r in left}

    def train_one(run, threads):
        if run.after is not None and run.after.out in done:
            done[run.after.out].wait()
        try:
            train(run, threads=threads)
        finally:
            done[run.out].set()
    in_parallel(args.jobs, [functools.partial(train_one, r) for r in left])


def threads_per_run(jobs):
    return max(1, (os.cpu_count() or 1) // jobs)


def in_parallel(jobs, tasks):
    """Run ``tasks`` (callables taking a thread count) ``jobs`` at a time, in order, with a line
    for each ("k of N", elapsed, and an estimate of the rest from the tasks done so far); re-raise
    the first failure."""
    threads = threads_per_run(jobs)
    failed = threading.Event()
    start, done, lock = time.time(), [0], threading.Lock()

    def guarded(k, task):  # nothing new starts after a failure; jobs already running finish
        if failed.is_set():
            return
        elapsed = time.time() - start
        rest = f", about {elapsed / done[0] * (len(tasks) - done[0]) / 60:.0f} min to go" if done[0] else ""
        print(f"[{k} of {len(tasks)}] {elapsed / 60:.0f} min elapsed{rest}", flush=True)
        try:
            task(threads=threads)
        except BaseException:
            failed.set()
            raise
        with lock:
            done[0] += 1
    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(guarded, k, task) for k, task in enumerate(tasks, 1)]:
            f.result()


def task1_rows(args, wanted):
    """Evaluate the runs behind ``wanted`` (row, seed) pairs (``wanted_rows``), trained by then, or
    with ``--no-train`` those that have finished; -> DataFrame of evaluation rows."""
    if args.no_train:
        wanted = [(r, s) for r, s in wanted if finished(args, r, s)]  # a run of another recipe is refused
        if not wanted:
            raise UserError(f"--no-train: no finished run of these rows under {args.runs}/task1 "
                            "(train them first: the same command without --no-train)")
    return evaluate_rows(args, wanted)


def finished(args, row, seed):
    """Whether the run behind ``row`` has trained all its epochs; a run there of another recipe
    is refused (a row that reuses another row's run is checked with that row)."""
    if row.same_as:
        return run_finished(trained_dir(args, row, seed))
    run, = [r for r in row_runs(args, [(row, seed)]) if r.row == row.name]
    return finished_run(run)


def run_finished(out, script=None, flags=None):
    """Whether the run in ``out`` has trained all its epochs; with ``script`` and ``flags``, a run
    there that ``script`` did not train with them (another budget, seed or option) is refused,
    never reused."""
    last = os.path.join(out, "last.pt")
    if not os.path.exists(last):
        return False
    ckpt = load_checkpoint(last)
    check_fields(ckpt, last, needed=RESUME)
    if script:
        check_same_recipe(ckpt, script, flags)
    return ckpt["epoch"] >= file_field(last, ckpt["args"], "epochs", int, within="args", low=1) and ckpt["step"] == 0


def evaluate_rows(args, wanted):
    """test_dw.py on the checkpoint behind each (row, seed), unless its evaluation is newer."""
    tasks, results = [], []
    for row, seed in wanted:
        ev = os.path.join(run_dir(args, row, seed), "eval")
        best = os.path.join(trained_dir(args, row, seed), "best.pt")
        results.append((row, seed, ev))
        sizes = sorted({*SIZES, args.img_size}) if row.name in SIZE_ROWS else [args.img_size]
        combos = row_combos(row)
        if not evaluated(os.path.join(ev, "results.json"), [best], {(c, s) for c in combos for s in sizes}):
            tasks.append(functools.partial(
                sh, "test_dw.py", "--checkpoint", best, "--as-model", row.model, "--data-root", args.data_root,
                "--combos", ",".join(combos), "--img-sizes", ",".join(map(str, sizes)),
                "--workers", str(args.workers), "--out", ev, *row.eval_flags, *limit_flags(args)))
    in_parallel(args.jobs, tasks)
    return pd.DataFrame([{**r, "model": row.name, "seed": seed}
                         for row, seed, ev in results for r in read_rows(os.path.join(ev, "results.json"))])


def limit_flags(args):
    """A trial run (``--limit``) is evaluated on as many test images."""
    return ["--limit", str(args.limit)] if getattr(args, "limit", None) else []


# Flags that say where a run goes and how fast, never what it learns; and --init-from, a path
# (which row a run starts from is decided by its folder's row, wherever --runs puts them).
NO_EFFECT = {"workers", "device", "log_every", "tensorboard", "out", "resume", "overwrite", "init_from"}
# Left to the model when not given (train.build_model fills them in from its defaults).
MODEL_DEFAULTS = {"channel_aug", "stem_base", "combo_bn", "combo_affine"}


def check_same_recipe(ckpt, script, flags):
    """A run folder left by another budget, seed or option must not slip into a table: every flag
    that can change what the run learns, given or at its default, must be the checkpoint's."""
    wanted = trained_recipe(script, flags)
    stored = {**trained_recipe(script, []), **BEFORE_FLAG, **ckpt["args"]}
    differ = [k for k, v in wanted.items() if k not in NO_EFFECT and not (v is None and k in MODEL_DEFAULTS)
              and stored.get(k) != v]
    if differ:
        had = ", ".join(f"{flag_name(k)} {flag_value(k, stored.get(k))}" for k in differ)
        wants = ", ".join(flag_value(k, wanted[k]) for k in differ)
        raise UserError(f"{ckpt['path']} was trained with {had}, not {wants}; "
                        "remove that folder or pass another --runs")


def is_newer(path, than):
    """An evaluation is reused only if it was written after the checkpoint it evaluates."""
    return os.path.exists(path) and os.path.getmtime(path) > os.path.getmtime(than)


def evaluated(path, checkpoints, cells=None):
    """Whether ``path`` holds an evaluation of exactly ``checkpoints`` (and of exactly the
    (combination, size) ``cells`` when given), written after all of them."""
    if not all(is_newer(path, c) for c in checkpoints):
        return False
    try:
        rows = read_rows(path, ("checkpoint", "combo", "img_size") if cells else ("checkpoint",))
    except UserError:  # damaged: evaluated again, and replaced whole
        return False
    # Paths as the evaluation wrote them (relative to where it ran) and as asked now: the same files?
    done = [os.path.realpath(p) for p in dict.fromkeys(r["checkpoint"] for r in rows)]
    return done == [os.path.realpath(c) for c in checkpoints] and \
        (cells is None or {(r["combo"], r["img_size"]) for r in rows} == cells)


def evaluate_side_by_side(args, ev, checkpoints):
    """test_rrdb.py on ``checkpoints`` side by side into ``ev``, the first (a ResNet34) the
    baseline, unless an evaluation of exactly these is newer than all of them."""
    path = os.path.join(ev, "results.json")
    if evaluated(path, checkpoints):
        return read_rows(path)
    sh("test_rrdb.py", "--checkpoints", *checkpoints, "--baseline", checkpoints[0], "--data-root", args.data_root,
       "--workers", str(args.workers), "--out", ev, *limit_flags(args))
    return read_rows(path)

