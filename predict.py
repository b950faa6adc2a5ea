"""Classify image files with a trained checkpoint or an exported ONNX model: the top-k classes
and their probabilities.

    python predict.py --checkpoint runs/dwg/best.pt photo.jpg more/ --channels RG --top 5
    python predict.py --checkpoint runs/dwg/export/dwg_RG.onnx photo.jpg   # export.py's file and its .json

Folders are searched for images (JPEG, PNG, BMP, WebP, TIFF); a file that cannot be read is
reported at the end, after every other file is predicted, and the exit status is then 2. Images
go through the evaluation transform of the checkpoint's training size; a Task 1 model sees only
the channels named by ``--channels`` (any combination of R, G, B, in that order; of a multi-band
checkpoint's bands, e.g. B04+B03+B02, default all of them). An ONNX model
takes the preprocessing and the channels written beside it by export.py. Class names come from
the checkpoint (``classes.txt`` of its data, or the wnids).
"""
import csv
import json
import os
import sys

import torch
from torchvision.transforms import v2 as T

from data.bands import read_array
from data.channels import RGB, parse_combo, select
from data.datasets import decode_image, eval_resize, load_image
from flags import add_device, add_no_ema
from models import inference_form
from models.loading import best_of, model_and_bands
from utils.checkpoint import image_size, load_checkpoint
from utils.distributed import resolve_device
from utils.errors import MAX_IMG_SIZE, Parser, UserError, at_least, cli, img_side
from utils.files import write_atomic
from utils.validate import file_field, mapping_of

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".npy")


def parse_args(argv):
    p = Parser(description=__doc__)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", required=True,
                   help="best.pt / last.pt, a run folder (its best.pt), or an exported .onnx")
    p.add_argument("--channels", default=None,
                   help="channels the model sees, e.g. RG or B (Task 1 models; default RGB, or the export's)")
    add_no_ema(p)
    p.add_argument("--top", type=at_least(1), default=5)
    p.add_argument("--out", default=None, metavar="FILE.csv",
                   help="also write the predictions as CSV (image, rank, class, probability)")
    p.add_argument("--img-size", type=img_side, default=None, help="default: the checkpoint's training size")
    add_device(p)
    return p.parse_args(argv)


def image_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                            if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UserError(f"image not found: {path}")
    if not files:
        raise UserError(f"no images in {', '.join(paths)}")
    return files


class CheckpointModel:
    """A checkpoint, deployed, seeing ``channels`` of images at ``img_size``."""

    def __init__(self, path, channels, img_size, device, ema=True):
        ckpt = load_checkpoint(best_of(path))
        self.bands = ckpt.get("bands")  # a multi-band root's: the files' bands, their statistics
        model, self.vocab = model_and_bands(ckpt, ema)  # the images' bands, in order
        self.model = inference_form(model).to(device)
        self.combo = parse_combo(channels or "all", self.vocab)
        self.size, self.device, self.classes = image_size(ckpt, img_size), device, ckpt["classes"]

    @torch.no_grad()
    def __call__(self, path):
        x, names = select(load_image(path, self.size, self.bands).to(self.device), "+".join(self.combo), self.vocab)
        return self.model(x, names)[0].float().cpu()


def read_sidecar(path):
    """The .json export.py writes beside an .onnx file, each field predict.py uses checked: the
    channels are letters of RGB, one mean and one std for each, a resize that can hold the crop
    and no more than the largest image side (``MAX_IMG_SIZE``) calls for, class names."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = mapping_of(path, json.load(f), "its JSON")
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, not UTF-8, a 5000-digit number
        raise UserError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    channels = file_field(path, meta, "channels", str)
    bands = tuple(file_field(path, meta, "bands", list, each=str)) if "bands" in meta else RGB
    try:
        kept = parse_combo(channels, bands)
    except UserError as exc:
        raise UserError(f"{path}: field 'channels': {exc}") from None
    # A multi-band export standardises raw values (uint16 and the like): a mean of thousands.
    span = 1e7 if "bands" in meta else 10
    crop = file_field(path, meta, "crop", int, low=8, high=MAX_IMG_SIZE)
    file_field(path, meta, "resize", int, low=crop, high=eval_resize(MAX_IMG_SIZE))
    file_field(path, meta, "antialias", bool)
    file_field(path, meta, "scale", float, low=1e-6, high=1)
    file_field(path, meta, "mean", list, low=-span, high=span, each=float, length=len(kept))
    file_field(path, meta, "std", list, low=1e-6, high=span, each=float, length=len(kept))
    if not file_field(path, meta, "classes", list, each=str):
        raise UserError(f"{path}: field 'classes' is empty")
    file_field(path, meta, "input", str)
    return meta


def check_graph(path, session, meta, meta_path):
    """The ONNX model takes what its .json prepares: its input by that name, with as many channels
    and that crop, and gives one logit per class named (where the graph fixes those sizes)."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    if meta["input"] not in inputs:
        raise UserError(f"{meta_path}: field 'input' {meta['input']!r} is not an input of {path} "
                        f"({', '.join(inputs)})")
    fixed = [(what, want, got) for what, want, got in zip(
        ("channels", "height", "width"), (len(meta["mean"]), meta["crop"], meta["crop"]), inputs[meta["input"]][1:])
             if isinstance(got, int) and got != want]
    classes = session.get_outputs()[0].shape[-1]
    if isinstance(classes, int) and classes != len(meta["classes"]):
        fixed.append(("classes", len(meta["classes"]), classes))
    if fixed:
        what, want, got = fixed[0]
        raise UserError(f"{meta_path} does not describe {path}: {want} {what} in the .json, {got} in the model; "
                        "an export's two files belong together")


class OnnxModel:
    """An export of export.py, run by ONNX Runtime with the preprocessing its .json records."""

    def __init__(self, path, channels, img_size):
        import onnxruntime
        meta_path = os.path.splitext(path)[0] + ".json"
        if not os.path.isfile(meta_path):
            raise UserError(f"{path}: no {meta_path} beside it (export.py writes one); it says how to prepare images")
        meta = read_sidecar(meta_path)
        self.bands = tuple(meta.get("bands", RGB))
        if channels and parse_combo(channels, self.bands) != parse_combo(meta["channels"], self.bands):
            raise UserError(f"{path} was exported for channels {meta['channels']}, not {channels}")
        if img_size and img_size != meta["crop"]:
            raise UserError(f"{path} was exported for {meta['crop']}px images, not --img-size {img_size}")
        self.meta, self.classes = meta, meta["classes"]
        from onnxruntime.capi import onnxruntime_pybind11_state as ort
        try:
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except (ort.Fail, ort.InvalidArgument, ort.InvalidGraph, ort.InvalidProtobuf, ort.NoSuchFile,
                ort.NotImplemented) as exc:  # a file that is no ONNX model, or not one this runtime runs
            raise UserError(f"cannot read {path}: {str(exc).strip().splitlines()[0]}") from None
        check_graph(path, self.session, meta, meta_path)
        self.geometry = T.Compose([T.Resize(meta["resize"], interpolation=T.InterpolationMode.BILINEAR,
                                            antialias=meta["antialias"]), T.CenterCrop(meta["crop"])])
        self.keep = [self.bands.index(c) for c in parse_combo(meta["channels"], self.bands)]

    def __call__(self, path):
        image = decode_image(path) if "bands" not in self.meta else read_array(path, len(self.bands))[0]
        x = self.geometry(image)[self.keep].float() * self.meta["scale"]
        x = (x - torch.tensor(self.meta["mean"]).view(-1, 1, 1)) / torch.tensor(self.meta["std"]).view(-1, 1, 1)
        return torch.from_numpy(self.session.run(None, {self.meta["input"]: x[None].numpy()})[0][0])


def predict(model, files, top):
    """-> (one list of (class index, probability) pairs per readable file, best first, in the
    order of ``files``; the files that could not be read, with why)."""
    ranked, failed = {}, []
    for path in files:
        try:
            logits = model(path)
        except UserError as exc:
            failed.append(str(exc))
            continue
        if not torch.isfinite(logits).all():
            raise UserError(f"{path}: the model's outputs are not finite (NaN or inf); nothing it predicts holds")
        p, idx = logits.softmax(0).topk(min(top, len(logits)))
        ranked[path] = list(zip(idx.tolist(), p.tolist()))
    return ranked, failed


HEADER = ("image", "rank", "class", "probability")


def check_out(path, inputs):
    """``--out`` replaces only a table of ours: never a folder, an input, or another file."""
    if os.path.isdir(path):
        raise UserError(f"cannot write --out {path}: a folder is there")
    if not os.path.exists(path):
        return
    if any(os.path.exists(p) and os.path.samefile(path, p) for p in inputs):
        raise UserError(f"--out {path} is one of the files it reads; pass another name")
    try:
        with open(path, encoding="utf-8") as f:
            ours = f.readline().rstrip("\n") == ",".join(HEADER)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise UserError(f"--out {path} exists and is not a table predict.py wrote; pass another name")


def write_csv(path, rows):
    """The whole file or none of it (``write_atomic``)."""
    write_atomic(path, lambda f: csv.writer(f, lineterminator="\n").writerows([HEADER, *rows]))
    print(f"wrote {path}")


@cli
def main(argv=None):
    args = parse_args(argv)
    if args.out:
        check_out(args.out, [args.checkpoint, *args.images])
    if args.checkpoint.endswith(".onnx"):
        model = OnnxModel(args.checkpoint, args.channels, args.img_size)
    else:
        model = CheckpointModel(args.checkpoint, args.channels, args.img_size, resolve_device(args.device), args.ema)
    ranked, failed = predict(model, image_files(args.images), args.top)
    for path, best in ranked.items():
        print(f"{path}: " + ", ".join(f"{model.classes[i]} {p:.1%}" for i, p in best))
    if args.out:
        write_csv(args.out, [(path, rank + 1, model.classes[i], f"{p:.6f}")
                             for path, best in ranked.items() for rank, (i, p) in enumerate(best)])
    if len(failed) == 1 and not ranked:  # the one image given: its reason is the error
        raise UserError(failed[0])
    for reason in failed:
        print(f"error: {reason}", file=sys.stderr)
    if failed:
        raise UserError(f"{len(failed)} of {len(failed) + len(ranked)} image(s) could not be read (above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
