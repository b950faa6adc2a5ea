"""Benchmarks: stem speed, a training step of every model as the result tables train it (with its
peak GPU memory), the sandwich's training step, whole training epochs, data-pipeline throughput,
and the complexity table.

    python -m bench [--parts stem,profile,model,sandwich,epoch,data,complexity] [--threads 2] [--quick]

Times are medians of torch.utils.benchmark runs after warm-up (the epoch part: medians of whole
alternated training runs), with the thread count fixed; every speed is reported as a ratio to its
plain counterpart measured in the same run, because absolute times drift on shared machines.
Writes <out>/<part>.md|json|csv and bench.json (default runs/bench); --update-docs publishes
instead: the tables into results/bench/, whose epoch and sandwich ratios the result tables read,
and the complexity and loader tables into docs/speed.md. The model part's images/s are what
``python -m experiments.results --plan`` turns into hours.
"""
import functools
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from data import DEFAULT_VOCAB, DataSpec, build_dataset, describe_root, parse_combo
from data.channels import sample_subset
from engine import Run, train_one_epoch
from experiments.results.records import data_identity
from experiments.results.runs import CANDIDATES, SPECIALISTS, TASK2
from flags import add_amp, add_data_root, add_device, build_parser, given_flags, resolve_args
from losses import DistillationLoss, LabelLoss, SandwichLoss
from models.backbones import BACKBONES
from models.stems import ChannelHyperStem, SeedDWGStem
from train import batch_mixing, build_criterion, build_model, training_state
from utils import distributed
from utils.complexity import complexity_row, stem_cost
from utils.distributed import device_name, resolve_device
from utils.errors import MAX_IMG_SIZE, Parser, UserError, at_least, choice_list, cli, img_side, int_list
from utils.report import check_doc_sections, page_path, update_doc, write_results, write_text

PARTS = ["stem", "profile", "model", "sandwich", "epoch", "data", "loader", "complexity"]


def parse_args(argv):
    p = Parser(description=__doc__)
    p.add_argument("--parts", default="stem,profile,model,sandwich,data,complexity", type=choice_list(PARTS))
    p.add_argument("--threads", type=at_least(1), default=2)
    add_device(p)
    p.add_argument("--batch-sizes", default="1,32,128", type=int_list(1))
    p.add_argument("--img-sizes", default="64,224", type=int_list(8, MAX_IMG_SIZE))
    p.add_argument("--model-img-size", type=img_side, default=None, help="default 224 on CUDA, 128 on CPU")
    p.add_argument("--model-batch", type=at_least(1), default=None, help="default 64 on CUDA, 16 on CPU")
    p.add_argument("--model-backbones", default="densenet121,small", type=choice_list(list(BACKBONES)),
                   help="model part: the bodies of the Task 1 steps not bound to one")
    add_amp(p)
    p.add_argument("--channels-last", action="store_true", help="model part: channels-last memory format (CUDA)")
    add_data_root(p, "synthetic")
    p.add_argument("--epoch-img-size", type=img_side, default=64, help="epoch part: image size")
    p.add_argument("--epoch-limit", type=at_least(1), default=None, help="epoch part: images per split (default all)")
    p.add_argument("--repeats", type=at_least(1), default=3, help="epoch part: runs of each model, alternated")
    p.add_argument("--epoch-models", type=choice_list(list(EPOCH_RECIPES)), default=list(EPOCH_RECIPES),
                   help="epoch part: the recipes timed, plain_zero always among them (default: all)")
    p.add_argument("--min-time", type=at_least(0.0, float), default=0.5, help="seconds of timed runs per measurement")
    p.add_argument("--out", default=None, help="default runs/bench, or results/bench with --update-docs")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--update-docs", action="store_true",
                   help="publish: tables into results/bench/ and the complexity and loader tables into docs/speed.md")
    p.add_argument("--docs", default="docs", help="the folder whose marked sections are replaced")
    args = p.parse_args(argv)
    if args.device == "auto":  # "cuda" stays as asked: main refuses it on a machine without CUDA
        args.device = resolve_device(args.device)
    args.out = args.out or ("results/bench" if args.update_docs else os.path.join("runs", "bench"))
    return args


def paste(args, section, text):
    """Into its marked section of docs/speed.md, when asked (``--update-docs``)."""
    if args.update_docs:
        update_doc(section, text, page_path(args.docs, "speed.md"))


def median_seconds(fn, args):
    for _ in range(1 if args.quick else 3):  # warm-up: allocator, caches, lazy init
        fn()
    if args.device == "cuda":
        torch.cuda.synchronize()
    from torch.utils import benchmark  # here: importing it warns about CUDA_HOME on CUDA-less machines
    t = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=args.threads)
    return t.blocked_autorange(min_run_time=args.min_time).median


def bench_stem(args):
    """Plain conv stem vs ours (kernel per batch / cached) vs the original's per-image loop."""
    dev, rows = torch.device(args.device), []
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 64, 7, 2, 3, bias=False).to(dev).eval()
    ours = ChannelHyperStem(64, 7, 2, 3).to(dev).eval()
    seed = SeedDWGStem(64, 7, 2, 3).to(dev).eval()
    rgb = ("R", "G", "B")
    for size in args.img_sizes:
        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, size, size, device=dev)
            with torch.no_grad():
                ours(x, rgb)  # fill the cache for the cached variant
                variants = {
                    "plain conv": lambda: plain(x),
                    "ours, kernel per batch": lambda: F.conv2d(x, ours.kernel(rgb), stride=2, padding=3),
                    "ours, cached kernel": lambda: ours(x, rgb),
                    "original, batched (grouped conv)": lambda: seed(x),
                    "original, per-image loop": lambda: seed.forward_reference(x),
                }
                times = {k: median_seconds(f, args) for k, f in variants.items()}
            for k, t in times.items():
                rows.append({"img_size": size, "batch": bs, "stem": k, "ms_per_image": 1e3 * t / bs,
                             "ratio_to_plain": t / times["plain conv"]})
    return rows


def bench_profile(args, calls=200):
    """Where the per-batch kernel generator of our stem spends its time (torch.profiler)."""
    stem = ChannelHyperStem(64, 7, 2, 3).to(args.device).eval()
    rgb = ("R", "G", "B")
    with torch.no_grad():
        total = median_seconds(lambda: stem.kernel(rgb), args)
        with torch.profiler.profile() as prof:
            for _ in range(calls):
                stem.kernel(rgb)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return [{"op": "kernel(), whole call (timer median)", "calls_per_kernel": 1, "self_cpu_us": 1e6 * total},
            *({"op": e.key, "calls_per_kernel": e.count / calls, "self_cpu_us": e.self_cpu_time_total / calls}
              for e in ops)]


@dataclass(frozen=True)
class Step:
    """What one training step of a run computes: its script and the flags that change a step
    (``--model`` first), and the model of its teacher when it distils."""
    script: str
    flags: tuple
    teacher: str = None

    @property
    def label(self):
        return " ".join([*self.flags[1:], *(["--teacher", self.teacher] if self.teacher else [])])


def trained_steps():
    """Every distinct training step of the result tables' rows (experiments/results/runs.py),
    then the default step of every registered model they leave out."""
    steps = [Step("train_dw.py", tuple(without(without(flags, "--val-every"), "--val-combos")))
             for flags in {**SPECIALISTS, **CANDIDATES}.values()]
    steps += [Step("train_rrdb.py", tuple(flags), "resnet34" if row == "shallow_kd" else None)
              for row, flags in TASK2.items()]
    for name in models.list_models():
        if name not in {step.flags[1] for step in steps}:
            script = "train_dw.py" if models.registry.model_task(name) == 1 else "train_rrdb.py"
            steps.append(Step(script, ("--model", name)))
    return list(dict.fromkeys(steps))


def without(flags, name):
    """``flags`` without ``name`` and its value (what is validated, and how often, does not change a step)."""
    i = flags.index(name) if name in flags else len(flags)
    return [*flags[:i], *flags[i + 2:]]


class SameBatch:
    """A training loader of one batch ``steps`` times over."""

    def __init__(self, x, y, steps):
        self.batches = [(x, y)] * steps

    def __iter__(self):
        return iter(self.batches)


def build_step(step, body, size, batch, args):
    """A run of ``step`` as train.py builds it, on 50 classes: -> (engine.Run, engine.State)."""
    script = importlib.import_module(step.script.removesuffix(".py"))
    flags = [*step.flags, "--img-size", str(size), "--batch-size", str(batch), "--amp", args.amp,
             "--device", args.device, *(["--backbone", body] if step.script == "train_dw.py" else []),
             *(["--channels-last"] if args.channels_last else [])]
    parser = build_parser(None, **script.DEFAULTS)
    targs, _ = resolve_args(parser.parse_args(flags), given_flags(parser, flags), parser,
                            script.DEFAULTS["default_model"])
    spec = DataSpec("synthetic", [f"class {i}" for i in range(50)], True)
    ctx = distributed.Context(device=torch.device(args.device))
    combo = "".join(parse_combo(targs.train_channels, DEFAULT_VOCAB)) if targs.train_channels else None
    model, config = build_model(targs, spec, None, ctx, combo)
    run = Run(model, args=targs, ctx=ctx, spec=spec, config=config, val_combos=[], train_combo=combo,
              train_set=range(batch), steps_per_epoch=1)
    build_criterion(run)
    if step.teacher:  # only Task 2 runs distil here, whose criterion is the label loss
        teacher = models.inference_form(models.create_model(step.teacher, 50)).to(ctx.device).requires_grad_(False)
        run.criterion = DistillationLoss(run.criterion, teacher, targs.kd_alpha, targs.kd_temperature)
    return run, training_state(run, None)


def time_step(step, body, size, batch, args):
    """Median seconds of one optimizer step of ``step`` (engine.train_one_epoch on a batch already
    on the device, a sandwich timed with the plain steps of its cycle), and the step's peak CUDA
    memory in MB."""
    run, state = build_step(step, body, size, batch, args)
    dev = run.ctx.device
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 50, (batch,), device=dev)
    cycle = getattr(run.criterion, "every", 1)
    loader, mix = SameBatch(x, y, cycle), batch_mixing(run.args, 50)

    def steps():
        train_one_epoch(run, state, loader, 1, mix=mix)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(steps, args) / cycle
    return seconds, torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else "n/a (CPU)"


def bench_model(args):
    """A training step of every model as python -m experiments.results trains it (``trained_steps``:
    its model, channel recipe, optimizer and teacher, built by train.py), every registered model
    included; Task 1 steps on each of --model-backbones: images/s, the ratio to plain_zero's step
    on the same body (Task 1) or resnet34's (Task 2), and on CUDA the peak memory."""
    size = args.model_img_size or (224 if args.device == "cuda" else 128)
    bs = args.model_batch or (64 if args.device == "cuda" else 16)
    rows = []
    for step in trained_steps():
        task1 = step.script == "train_dw.py"
        for backbone in args.model_backbones if task1 else ["-"]:
            seconds, memory = time_step(step, backbone, size, bs, args)
            rows.append({"step": step.label, "model": step.flags[1], "task": 1 if task1 else 2, "backbone": backbone,
                         "img_size": size, "batch": bs, "amp": args.amp, "device": device_name(args.device),
                         "images_per_s": bs / seconds, "ms_per_step": 1e3 * seconds, "peak_memory_mb": memory})
    plain = {(r["task"], r["backbone"]): r["ms_per_step"] for r in rows if r["step"] in ("plain_zero", "resnet34")}
    for r in rows:
        r["ratio_to_plain"] = r["ms_per_step"] / plain.get((r["task"], r["backbone"]), float("nan"))
    return rows


# The sandwich's cheaper variants (SandwichLoss's options), each as train_dw.py would build it.
SANDWICH_RECIPES = {
    "sandwich, 2 reduced sets (full batch)": {},
    "sandwich, reduced sets on 1/4 of the batch": {"fraction": 0.25},
    "sandwich on 1 step in 3, subset sampling between": {"every": 3},
    "sandwich on 1 step in 3 on 1/4 of the batch, subset sampling between": {"every": 3, "fraction": 0.25},
}


def bench_sandwich(args):
    """What a training step costs with each channel recipe, against plain_zero's RGB step (one
    optimizer step on one batch; the sandwich makes 1 + ``subsets`` forward/backward passes)."""
    dev, rows = torch.device(args.device), []
    size = args.model_img_size or (224 if args.device == "cuda" else 128)
    bs = args.model_batch or (64 if args.device == "cuda" else 16)
    setups = [("small", 32, 8)] if args.quick else [("densenet121", size, bs), ("small", 64, 64)]
    for backbone, img, batch in setups:
        torch.manual_seed(0)
        x = torch.randn(batch, 3, img, img, device=dev)
        y = torch.randint(0, 50, (batch,), device=dev)
        gen = torch.Generator().manual_seed(0)
        recipes = {"plain_zero, RGB": ("plain_zero", LabelLoss(), None),
                   "dwg, subset sampling": ("dwg", LabelLoss(), functools.partial(sample_subset, generator=gen)),
                   **{name: ("dwg", SandwichLoss(LabelLoss(), 2, gen, **options), None)
                      for name, options in SANDWICH_RECIPES.items()}}
        nets = {m: models.create_model(m, 50, backbone=backbone).to(dev).train() for m in ("plain_zero", "dwg")}
        times = {}
        for name, (model_name, criterion, augment) in recipes.items():
            net = nets[model_name]
            opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
            cycle = getattr(criterion, "every", 1)  # timed whole: one sandwich, cycle - 1 steps between

            def steps():
                for _ in range(cycle):
                    xb, names = augment(x, "RGB") if augment else (x, tuple("RGB"))
                    opt.zero_grad(set_to_none=True)
                    for loss, _ in criterion(lambda xs, ns, sync=True: net(xs, ns), xb, names, y):
                        loss.backward()
                    opt.step()

            times[name] = median_seconds(steps, args) / cycle
        for name, t in times.items():
            criterion = recipes[name][1]
            options = ({k: getattr(criterion, k) for k in ("fraction", "every")}
                       if isinstance(criterion, SandwichLoss) else {"fraction": None, "every": None})
            rows.append({"backbone": backbone, "img_size": img, "batch": batch, "recipe": name, **options,
                         "ms_per_step": 1e3 * t, "ratio_to_plain": t / times["plain_zero, RGB"]})
    return rows


# Each as experiments.results trains it, its validation cadence included (runs.py).
EPOCH_RECIPES = {"plain_zero": SPECIALISTS["plain_zero"], **CANDIDATES}


def bench_epoch(args):
    """Whole training epochs of the sweep's candidates (runs.py) against plain_zero's:
    each a ``train_dw.py`` run of one epoch on the small CNN, all alternated ``--repeats`` times,
    one process at a time with ``--threads`` threads; medians of the logged seconds of training
    (loading and steps) and of the whole epoch (validation included). ``val_every_epoch_ratio``
    is the cost of an epoch with validation once every ``val_every`` epochs (the recipe's
    ``--val-every``; a one-epoch run validates at its last), against plain_zero validating every epoch."""
    common = ["--backbone", "small", "--data-root", args.data_root, "--img-size", str(args.epoch_img_size),
              "--batch-size", "64", "--epochs", "1", "--workers", "1", "--overwrite",
              *(["--limit", str(args.epoch_limit)] if args.epoch_limit else [])]
    if args.quick:
        common += ["--limit", "64", "--batch-size", "16"]
    timed = {name: EPOCH_RECIPES[name] for name in dict.fromkeys(["plain_zero", *args.epoch_models])}
    seconds = {name: [] for name in timed}
    recipe = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, flags in timed.items():
                out = os.path.join(tmp, name)
                subprocess.run([sys.executable, "train_dw.py", *flags, *common, "--out", out], check=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                               cwd=os.path.dirname(os.path.abspath(__file__)), stdout=subprocess.DEVNULL)
                log = pd.read_csv(os.path.join(out, "log.csv"))
                seconds[name].append((log["train_seconds"].iloc[0], log["seconds"].iloc[0]))
                with open(os.path.join(out, "config.json")) as f:
                    config = json.load(f)
                recipe[name] = {k: config[k] for k in config
                                if k.startswith("sandwich_") or k in ("channel_aug", "single_prob", "val_every")}
                images = config["limit"]
    median = {name: np.median(np.array(v), axis=0) for name, v in seconds.items()}
    plain_train, plain_epoch = median["plain_zero"]
    return [{"row": name, "flags": EPOCH_RECIPES[name], "data": data_identity(args.data_root)["name"],
             "img_size": args.epoch_img_size, "batch": 64 if not args.quick else 16, "limit": images,
             "repeats": args.repeats, **recipe[name], "train_seconds": median[name][0],
             "epoch_seconds": median[name][1], "plain_train_seconds": plain_train, "plain_epoch_seconds": plain_epoch,
             "ratio_to_plain": median[name][0] / plain_train, "epoch_ratio_to_plain": median[name][1] / plain_epoch,
             "val_every_epoch_ratio": amortized(median[name], recipe[name]["val_every"]) / plain_epoch}
            for name in timed]


def other_settings(path, rows):
    """The epoch rows already in ``path`` that ``rows`` do not time again (other data, sizes or
    batches, or recipes left out by --epoch-models): each is kept until it is timed again (the
    Task 1 tables read theirs); each row's ratios are to the plain_zero of its own timing, whose
    seconds the row keeps (``plain_train_seconds``, ``plain_epoch_seconds``)."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return []
    timed = {(r["data"], r["img_size"], r["batch"], r["row"]) for r in rows}
    return [r for r in old if isinstance(r, dict) and "row" in r
            and (r.get("data"), r.get("img_size"), r.get("batch"), r.get("row")) not in timed]


def amortized(seconds, val_every):
    """An epoch's seconds when validation (the part of the epoch after training) runs every N-th epoch."""
    train, whole = seconds
    return train + (whole - train) / val_every


def bench_data(args):
    """Images/s the loader delivers (decode, resize, channel sampling) beside what a model consumes."""
    spec = describe_root(args.data_root)
    img = 64
    ds = build_dataset(spec, "train", img, train=True, limit=None if not args.quick else 256)
    n = min(len(ds), 256 if args.quick else 1024)
    sub = torch.utils.data.Subset(ds, range(n))
    rows = []
    for workers in (0, 1, 2):
        loader = torch.utils.data.DataLoader(sub, batch_size=64, num_workers=workers, drop_last=True)
        g = torch.Generator().manual_seed(0)
        start, seen = time.perf_counter(), 0
        for x, _ in loader:
            sample_subset(x, ("R", "G", "B"), g)
            seen += len(x)
        rows.append({"what": f"loader, {workers} workers", "img_size": img,
                     "images_per_s": seen / (time.perf_counter() - start)})
    model = models.create_model("dwg", len(spec.classes), backbone="small")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 3, img, img), torch.randint(0, len(spec.classes), (64,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x, ("R", "G", "B")), y).backward()
        opt.step()

    rows.append({"what": "model consumes (dwg, small backbone, train step)", "img_size": img,
                 "images_per_s": 64 / median_seconds(step, args)})
    for r in rows:
        r["data"] = spec.name
    return rows


# Training images/s a GPU could take, used only to turn images/s per core into cores. Round
# figures, not measurements: DenseNet-121 with AMP on a previous-generation consumer GPU
# (700-900 is the range usually quoted), and assumed rates on a current data-centre GPU.
DEMAND = {"densenet121 (consumer GPU, AMP)": 800, "densenet121 (data-centre GPU, AMP)": 3000,
          "resnet34 (data-centre GPU, AMP)": 5000, "shallow (data-centre GPU, AMP)": 10000}


def bench_loader(args):
    """The training pipeline per core at 224 px on full-size photos: the earlier one (PIL decode,
    crop and resize, float32 normalised on the CPU) against ours (libjpeg-turbo decode, uint8
    crop and resize, normalised on the device), and what is left to a worker with ``--decode
    device`` (reading the file; the device decodes, crops and resizes, which no CPU figure
    measures), on the files as they are and on a prepared copy (``python -m data.prepare``,
    shorter side 256 px, written to a temporary folder)."""
    import tempfile

    from data import prepare
    from data.datasets import build_transform as uint8_transform
    from data.datasets import decode_image, encoded_image, read_image, reference_transform
    spec = describe_root(args.data_root)
    if spec.synthetic:
        raise UserError("the loader part reads image files: pass --data-root (a folder of list files and "
                        "JPEGs, e.g. the mini-ImageNet root) or set $DATA_ROOT")
    files = build_dataset(spec, "train", 224).samples
    rounds = 1 if args.quick else 7
    torch.set_num_threads(1)  # per core: what one loader worker does

    def rate(load, transform, paths):
        torch.manual_seed(0)
        start = time.perf_counter()
        for path, _ in paths:
            transform(load(path))
        return len(paths) / (time.perf_counter() - start)

    def crop_bytes(bytes_per_value):
        return lambda paths: 3 * 224 * 224 * bytes_per_value

    def file_bytes(paths):  # the encoded JPEGs travel as they are
        return round(sum(encoded_image(p).numel() for p, _ in paths) / len(paths))

    pipelines = {"earlier: PIL, float32 on the CPU": (read_image, reference_transform(224, train=True), crop_bytes(4)),
                 "ours: decode_jpeg, uint8": (decode_image, uint8_transform(224, train=True), crop_bytes(1)),
                 "ours, --decode device: the worker's part": (encoded_image, lambda data: data, file_bytes)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared")
        prepare.main([spec.root, prepared, "--max-side", "256", "--workers", "1"])
        copies = {"full-size files": files,
                  "prepared copy (shorter side 256)": [(os.path.join(prepared, os.path.relpath(p, spec.root)), y)
                                                       for p, y in files]}
        runs = [(copy, name) for copy in copies for name in pipelines]
        # Round-robin passes, each pipeline's median: a slow spell of a shared machine then
        # falls on every pipeline alike instead of on whichever ran during it.
        rates = {run: [] for run in runs}
        for _ in range(rounds):
            for copy, name in runs:
                rates[(copy, name)].append(rate(*pipelines[name][:2], copies[copy]))
        for copy, name in runs:
            rows.append({"pipeline": name, "files": copy,
                         "images_per_s_per_core": float(np.median(rates[(copy, name)])),
                         "bytes_to_device_per_image": pipelines[name][2](copies[copy])})
    reference = rows[0]["images_per_s_per_core"]
    for r in rows:
        r["speedup"] = r["images_per_s_per_core"] / reference
        for what, demand in DEMAND.items():
            r[f"cores for {what} at {demand}/s"] = demand / r["images_per_s_per_core"]
    return rows


def loader_markdown(rows, root, env):
    df = pd.DataFrame(rows)
    cores = [c for c in df.columns if c.startswith("cores for")]
    table = df[["pipeline", "files", "images_per_s_per_core", "speedup", "bytes_to_device_per_image", *cores]]
    table.columns = ["pipeline", "files", "images/s per core", "speed-up", "bytes to the device per image", *cores]
    return (f"`python -m bench --parts loader --data-root {root}` (training transform at 224 px, one "
            f"thread; {env['cpu']}, torch {env['torch']}):\n\n" + table.to_markdown(index=False, floatfmt=".2f"))


def bench_complexity(args):
    rows = []
    for name in models.list_models():
        kw = {"backbone": "densenet121"} if models.registry.model_task(name) == 1 else {}
        model = models.create_model(name, 50, **kw)
        if hasattr(model, "set_progress"):  # deep training's end, where its layers merge
            model.set_progress(1.0)
        model = models.inference_form(model)
        rows.append({"model": name, "backbone": kw.get("backbone", "-"), **complexity_row(model)})
    stems = []
    for name in ("dwg", "seed_dwg", "plain_zero"):
        model = models.create_model(name, 50, backbone="densenet121")
        for combo in ("RGB", "RG", "R"):
            stems.append({"model": name, **stem_cost(model, combo)})
    return rows, stems


def complexity_markdown(rows):
    df = pd.DataFrame(rows)
    table = pd.DataFrame({
        "model": df["model"], "backbone": df["backbone"], "Params (M)": df["params"] / 1e6,
        "Multi-Adds (G)": df["macs"] / 1e9, "FLOPs (G)": df["flops"] / 1e9,
        "Fwd/bwd memory (MB)": df["fwd_bwd_mb"], "weighted layers": df["layers"]})
    return table.to_markdown(index=False, floatfmt=".3f")


@cli
def main(argv=None):
    args = parse_args(argv)
    args.device = resolve_device(args.device)  # "cuda" without CUDA: one line
    if args.quick:
        args.batch_sizes, args.img_sizes, args.min_time = [1, 8], [32], 0.05
        args.model_img_size, args.model_batch, args.model_backbones = 32, 2, ["small"]
    torch.set_num_threads(args.threads)
    parts = args.parts
    if args.update_docs and not args.quick:  # every page checked before the first table is replaced
        check_doc_sections({p: page_path(args.docs, "speed.md") for p in ("loader", "complexity") if p in parts})
    env = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(),
           "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    print(f"benchmark environment: {env}")
    report = {"environment": env}
    runners = {"stem": bench_stem, "profile": bench_profile, "model": bench_model, "sandwich": bench_sandwich,
               "epoch": bench_epoch,
               "data": bench_data, "loader": bench_loader}
    for part in parts:
        if part in runners:
            rows = runners[part](args)
            if part == "epoch":
                rows = other_settings(os.path.join(args.out, "epoch.json"), rows) + rows
            report[part] = rows
            write_results(rows, args.out, part, f"{part} benchmark ({env['device']}, {args.threads} threads)")
            print(f"\n## {part}\n" + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
            if part == "loader" and not args.quick:
                paste(args, "loader", loader_markdown(rows, args.data_root, env))
    if "complexity" in parts:
        rows, stems = bench_complexity(args)
        report["complexity"], report["stem_cost"] = rows, stems
        table = complexity_markdown(rows)
        write_results(rows, args.out, "complexity")
        write_results(stems, args.out, "stem_cost")
        stem_table = pd.DataFrame(stems).to_markdown(index=False)
        print(f"\n## complexity at 3x224x224\n{table}\n\n## stem cost (DenseNet-121 stem, 224 px)\n{stem_table}")
        if not args.quick:
            paste(args, "complexity", f"{table}\n\nStem against a plain convolution of the same shape "
                          f"(DenseNet-121 stem, 224 px):\n\n{stem_table}")
    path = os.path.join(args.out, "bench.json")
    if os.path.exists(path):  # a run of some parts keeps the others' last results
        try:
            with open(path) as f:
                report = {**json.load(f), **report}
        except (ValueError, TypeError, OSError):  # our own file, cut or damaged: this run's results replace it
            print(f"warning: {path} could not be read; it now holds this run's parts only", file=sys.stderr)
    write_text(path, json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
