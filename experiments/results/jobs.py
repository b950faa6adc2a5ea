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

from data import DEFAULT_COMBOS
from train import BEFORE_FLAG, build_parser, given_flags, resolve_args
from utils.checkpoint import RESUME, check_fields, load_checkpoint
from utils.errors import UserError
from utils.validate import file_field, read_rows

from .rows import EQUAL_TIME, ROWS, SIZE_ROWS, SIZES, TASK1_COMBOS, row_recipe, run_dir, schedule


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


def train(script, out, flags, threads=None):
    """Train unless a finished run of this recipe is already there; resume an unfinished one."""
    if run_finished(out, script, flags):
        return
    if os.path.exists(os.path.join(out, "last.pt")):
        sh(script, "--resume", out, threads=threads)
    else:
        sh(script, *flags, "--out", out, "--overwrite", threads=threads)


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


def train_rows(args, wanted):
    """Train the runs behind ``wanted`` (row, seed) pairs, ``--jobs`` at a time in that order; a
    row that starts from another row's checkpoint waits for it."""
    order = []  # runs to train, each after the runs it needs

    def need(row, seed):
        for name in (row.init, row.same_as):
            if name:
                need(ROWS[name], seed)
        if not row.same_as and (row.name, seed) not in order:
            order.append((row.name, seed))
    for row, seed in wanted:
        need(row, seed)
    done = {key: threading.Event() for key in order}

    def train_row(name, seed, threads):
        row = ROWS[name]
        if row.init:
            done[(row.init, seed)].wait()
        try:
            train("train_dw.py", run_dir(args, row, seed), row_flags(args, row, seed), threads=threads)
        finally:
            done[(name, seed)].set()
    in_parallel(args.jobs, [functools.partial(train_row, *key) for key in order])


def task1_rows(args, rows, seeds):
    """Train (``train_rows``) and evaluate ``rows``; -> DataFrame of evaluation rows."""
    if args.models:  # a row's equal-time twin comes with it
        rows = [r for r in rows if r.name.removesuffix(EQUAL_TIME) in args.models.split(",")]
    wanted = schedule(rows, seeds)
    if args.no_train:
        wanted = [(r, s) for r, s in wanted if finished(args, r, s)]  # a run of another recipe is refused
        if not wanted:
            raise UserError(f"--no-train: no finished run of these rows under {args.runs}/task1 "
                            "(train them first: the same command without --no-train)")
    else:
        train_rows(args, wanted)
    return evaluate_rows(args, wanted)


def finished(args, row, seed):
    """Whether the run behind ``row`` has trained all its epochs (``run_finished``)."""
    row = ROWS[row.same_as] if row.same_as else row
    return run_finished(run_dir(args, row, seed), "train_dw.py", row_flags(args, row, seed))


def row_flags(args, row, seed):
    """The command line of a Task 1 row's training run, but its --out."""
    flags = [*row_recipe(args, row, seed), "--model", row.model, *row.flags]
    if args.pretrained and not row.init:
        flags += ["--pretrained", args.pretrained]
    if row.init:
        flags += ["--init-from", os.path.join(run_dir(args, ROWS[row.init], seed), "best.pt")]
    return flags


def run_finished(out, script, flags):
    """Whether the run in ``out`` has trained all its epochs; a run there that ``script`` did not
    train with ``flags`` (another budget, seed or option) is refused, never reused."""
    last = os.path.join(out, "last.pt")
    if not os.path.exists(last):
        return False
    ckpt = load_checkpoint(last)
    check_fields(ckpt, last, needed=RESUME)
    check_same_recipe(ckpt, script, flags)
    return ckpt["epoch"] >= file_field(last, ckpt["args"], "epochs", int, within="args", low=1) and ckpt["step"] == 0


def evaluate_rows(args, wanted):
    """test_dw.py on the checkpoint behind each (row, seed), unless its evaluation is newer."""
    tasks, results = [], []
    for row, seed in wanted:
        ev = os.path.join(run_dir(args, row, seed), "eval")
        best = os.path.join(run_dir(args, ROWS[row.same_as] if row.same_as else row, seed), "best.pt")
        results.append((row, seed, ev))
        sizes = sorted({*SIZES, args.img_size}) if row.name in SIZE_ROWS else [args.img_size]
        combos = [row.channel] if row.channel else TASK1_COMBOS
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
SCRIPTS = {"train_dw.py": ("dwg", ",".join(DEFAULT_COMBOS)), "train_rrdb.py": ("shallow", "RGB")}


def trained_recipe(script, flags):
    """Every flag of a run that ``script`` trains with ``flags``, filled in as train.py fills it."""
    default_model, val_combos = SCRIPTS[script]
    parser = build_parser("", default_model, val_combos)
    args, _ = resolve_args(parser.parse_args(flags), given_flags(parser, flags), parser, default_model)
    return vars(args)


def check_same_recipe(ckpt, script, flags):
    """A run folder left by another budget, seed or option must not slip into a table: every flag
    that can change what the run learns, given or at its default, must be the checkpoint's."""
    wanted = trained_recipe(script, flags)
    stored = {**trained_recipe(script, []), **BEFORE_FLAG, **ckpt["args"]}
    differ = [k for k, v in wanted.items() if k not in NO_EFFECT and not (v is None and k in MODEL_DEFAULTS)
              and stored.get(k) != v]
    if differ:
        had = ", ".join(f"--{k.replace('_', '-')} {stored.get(k)}" for k in differ)
        raise UserError(f"{ckpt['path']} was trained with {had}, not {', '.join(str(wanted[k]) for k in differ)}; "
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

