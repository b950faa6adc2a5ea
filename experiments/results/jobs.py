"""Running the jobs: each trained by its entry script (a finished run reused, an interrupted one
resumed), evaluated by its test script, and kept as a record (``records.py``), ``--jobs`` at once."""
import functools
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from flags import BEFORE_FLAG, flag_name, flag_value, recipe_of
from utils.checkpoint import RESUME, check_fields, load_checkpoint
from utils.errors import UserError
from utils.validate import file_field, read_rows

from .records import identity, make_record, recipe, run_log


class Children:
    """The scripts running now and the stop signal, delivered to each of them once."""
    running, signalled = set(), set()
    stopped = 0
    lock = threading.RLock()  # re-entrant: the handler may interrupt the main thread inside it


def _deliver(proc):
    with Children.lock:
        if Children.stopped and proc not in Children.signalled:
            Children.signalled.add(proc)
            proc.send_signal(Children.stopped)


def forward_stop_signals():
    """SIGINT/SIGTERM reach each running script once (each runs in a session of its own, so a
    signal to the driver's process group does not reach it twice), a script starting at that
    moment included; each finishes its step, saves last.pt and exits, and nothing new starts."""
    def handler(signum, frame):
        with Children.lock:
            if not Children.stopped:
                print(f"\n{signal.Signals(signum).name}: passed to the running scripts; waiting for them to save",
                      file=sys.stderr, flush=True)
                Children.stopped = signum
            for proc in list(Children.running):
                _deliver(proc)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def sh(*cmd, threads=None):
    """Run an entry script; its failure is one line (its own error is printed above it)."""
    if Children.stopped:
        raise SystemExit(128 + Children.stopped)
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    with Children.lock:
        proc = subprocess.Popen([sys.executable, *cmd], env=env, start_new_session=True)
        Children.running.add(proc)
        _deliver(proc)
    try:
        code = proc.wait()
    finally:
        Children.running.discard(proc)
    if Children.stopped:
        raise SystemExit(128 + Children.stopped)
    if code:
        raise UserError(f"{' '.join(cmd[:3])} ... exited with status {code} (its error is above); finished runs "
                        "are kept and the same command resumes the rest")


# Left to the model when not given: train.build_model fills them in from the model's defaults.
MODEL_DEFAULTS = {"channel_aug", "stem_base", "combo_bn"}


def status(args, job):
    """'finished', 'partly trained' or 'new'; a folder holding another recipe's run, or a run of
    other lists under the same data root, is refused, never reused or resumed."""
    last = os.path.join(job.out, "last.pt")
    if not os.path.exists(last):
        if os.path.exists(job.out) and not os.path.isdir(job.out):
            raise UserError(f"{job.out} is a file where the run's folder goes; move it or pass another --out")
        return "new"
    ckpt = load_checkpoint(last)
    check_fields(ckpt, last, needed=RESUME)
    stored = {**recipe_of(job.script, []), **BEFORE_FLAG, **ckpt["args"]}
    wanted = recipe(job)
    differ = [k for k, v in wanted.items() if stored.get(k) != v and not (v is None and k in MODEL_DEFAULTS)]
    if differ:
        had = ", ".join(f"{flag_name(k)} {flag_value(k, stored.get(k))}" for k in differ)
        raise UserError(f"{last} was trained with {had}, not {', '.join(flag_value(k, wanted[k]) for k in differ)}; "
                        "remove that folder or pass another --out")
    lists = identity(args)["lists"]
    changed = [k for k, v in (ckpt.get("lists") or {}).items() if lists.get(k, "") != v.rsplit("sha256 ", 1)[-1]]
    if changed:
        raise UserError(f"{last}: {changed[0]} of {args.data_root} changed since the run trained; remove that folder "
                        "or pass another --out")
    done = ckpt["epoch"] >= file_field(last, ckpt["args"], "epochs", int, within="args", low=1) and not ckpt["step"]
    return "finished" if done else "partly trained"


def train(args, job, threads=None):
    state = status(args, job)
    if state == "partly trained":
        sh(job.script, "--resume", job.out, threads=threads)
    elif state == "new":
        sh(job.script, *job.all_flags, "--out", job.out, "--overwrite", threads=threads)


def evaluate(args, job, row, as_model, threads=None):
    """The job's best.pt evaluated as ``row`` (test_dw.py / test_rrdb.py), unless an evaluation
    of it with these combinations and sizes is newer; -> its result rows."""
    sizes = "-".join(map(str, job.sizes))  # the headline's evaluation at several sizes beside the sweep's
    best, ev = os.path.join(job.out, "best.pt"), os.path.join(job.out, f"eval-{row}" + (f"-{sizes}" if sizes else ""))
    path = os.path.join(ev, "results.json")
    limit = ["--limit", str(args.limit)] if args.limit else []
    common = ["--data-root", args.data_root, "--workers", str(args.workers), "--out", ev, *limit]
    if job.script == "train_rrdb.py":
        cmd, cells = ["test_rrdb.py", "--checkpoints", best, *common], None
    else:
        cells = {(c, s) for c in job.combos for s in job.sizes}
        cmd = ["test_dw.py", "--checkpoint", best, *(["--as-model", as_model] if as_model else []), "--combos",
               ",".join(job.combos), "--img-sizes", ",".join(map(str, job.sizes)), *common]
    if not evaluated(path, best, cells):
        sh(*cmd, threads=threads)
    return read_rows(path)


def evaluated(path, checkpoint, cells):
    """Whether ``path`` holds an evaluation of ``checkpoint`` (of exactly ``cells``, (combination,
    size) pairs, when given), written after it."""
    if not (os.path.exists(path) and os.path.getmtime(path) > os.path.getmtime(checkpoint)):
        return False
    try:
        rows = read_rows(path, ("checkpoint",) + (("combo", "img_size") if cells else ()))
    except UserError:  # damaged: evaluated again, and replaced whole
        return False
    same = {os.path.realpath(r["checkpoint"]) for r in rows} == {os.path.realpath(checkpoint)}
    return same and (cells is None or {(r["combo"], r["img_size"]) for r in rows} == cells)


def run_job(args, job, records, threads=None):
    """The job's records: found (made alike), or trained unless ``--no-train`` and evaluated."""
    made = {row: identity(args, job, row) for row, _ in job.evals}
    found = {row: records.find(row, job.seed, job.epochs, m) for row, m in made.items()}
    if all(found.values()):
        return
    if args.no_train and status(args, job) != "finished":
        return
    print(f"[{job.row}, {job.epochs} epochs, seed {job.seed}] {status(args, job)}", flush=True)
    train(args, job, threads)
    log = run_log(job.out)
    for row, as_model in job.evals:
        if not found[row]:
            rows = evaluate(args, job, row, as_model, threads)
            records.add(make_record(row, job, made[row], rows, log))


def run_jobs(args, jobs, records):
    """Every job, ``--jobs`` at a time in order; one that distils from another waits for it."""
    done = {j.out: threading.Event() for j in jobs}

    def one(job, threads):
        if job.after is not None and job.after.out in done:
            done[job.after.out].wait()
        try:
            run_job(args, job, records, threads)
        finally:
            done[job.out].set()
    in_parallel(args.jobs, [functools.partial(one, j) for j in jobs])


def threads_per_run(jobs):
    return max(1, (os.cpu_count() or 1) // jobs)


def in_parallel(jobs, tasks):
    """``tasks`` (callables taking a thread count) ``jobs`` at a time, in order; the first failure
    is raised once the running ones end, and nothing new starts after it."""
    threads, failed = threads_per_run(jobs), threading.Event()

    def guarded(task):
        if failed.is_set():
            return
        try:
            task(threads=threads)
        except BaseException:
            failed.set()
            raise
    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(guarded, task) for task in tasks]:
            f.result()
