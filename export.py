"""Export a trained model for one channel combination to ONNX and/or torch.export, and check it.

    python export.py --checkpoint runs/dwg/best.pt --channels RG --formats onnx,torch

The model is deployed first: for a Task 1 model, a plain network for those channels (its stem
kernel for them as an ordinary convolution, its BatchNorm statistics for that set); for Task 2,
re-parameterised branches folded. The batch dimension stays dynamic; the image size is fixed
(default: the checkpoint's training size). The exported model takes images normalised with the
ImageNet mean and standard deviation of the channels it was exported for, in that order (a
multi-band model: its training split's, per band; the .json file beside it says so), and is
checked against PyTorch on a real image of the data: the largest logit difference must stay
under --atol.
"""
import json
import os
import sys

import numpy as np
import torch

from data import build_dataset, describe_root
from data.channels import RGB, combo_name, parse_combo, select
from data.datasets import IMAGENET_MEAN, IMAGENET_STD, eval_resize, load_image, normalize
from flags import add_data_root, add_no_ema
from models import inference_form
from models.loading import best_of, model_and_bands
from utils.checkpoint import image_size, load_checkpoint, save_atomic
from utils.errors import Parser, UserError, at_least, choice_list, cli, img_side

FORMATS = ("onnx", "torch", "weights")


def parse_args(argv):
    p = Parser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt, or a run folder (its best.pt)")
    p.add_argument("--channels", default=None,
                   help="the combination the exported model takes, e.g. RG or B04+B03+B02 (default: RGB, or "
                        "every band of a multi-band checkpoint)")
    p.add_argument("--formats", default="onnx,torch", type=choice_list(FORMATS),
                   help="comma-separated: onnx (.onnx), torch (.pt2), weights (<model>_weights.pt: the "
                        "checkpoint without optimizer and RNG states, loadable by every script)")
    p.add_argument("--img-size", type=img_side, default=None, help="default: the checkpoint's training size")
    p.add_argument("--image", default=None,
                   help="image to check the export on (default: the first test image of --data-root)")
    add_data_root(p, "the checkpoint's data")
    add_no_ema(p)
    p.add_argument("--out", default=None, help="folder (default: <run folder>/export)")
    p.add_argument("--atol", type=at_least(0.0, float), default=1e-4, help="largest logit difference accepted")
    return p.parse_args(argv)


def deployed_for(model, channels):
    """The plain inference network for ``channels`` (``models.inference_form``)."""
    try:
        return inference_form(model, channels)
    except ValueError:
        raise UserError(f"--channels {combo_name(channels)}: this is a Task 2 model, it takes RGB only") from None


def check_image(args, ckpt, size):
    """A ``[1, 3, size, size]`` image of the data (or --image) through the evaluation transform."""
    if args.image:
        return load_image(args.image, size, ckpt.get("bands")), args.image
    spec = describe_root(args.data_root or ckpt["data"], ckpt.get("bands"))
    dataset = build_dataset(spec, "test", size, limit=1)
    return normalize(dataset[0][0].unsqueeze(0), spec.stats), f"the first test image of {spec.name}"


def export_onnx(net, example, path):
    batch = torch.export.Dim("batch")
    torch.onnx.export(net, (example,), path, input_names=["image"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), dynamo=True, external_data=False)
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime is not installed: the .onnx file is not checked against PyTorch")
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def export_torch(net, example, path):
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return torch.export.load(path).module()


def sidecar(ckpt, channels, size):
    """What the exported model expects, enough to prepare an image without this repository:
    decode as ``decode`` says (8-bit RGB, EXIF orientation applied; or a multi-band file's
    ``bands``), resize the shorter side to ``resize``
    (bilinear, antialiased), crop the centre ``crop`` x ``crop``, keep ``channels`` in that order,
    multiply by ``scale``, subtract ``mean`` and divide by ``std`` per channel; NCHW float32."""
    bands = ckpt.get("bands")
    names = bands["names"] if bands else RGB
    idx = [list(names).index(c) for c in channels]
    norm = ({"decode": "8-bit RGB, EXIF orientation applied", "scale": 1 / 255,
             "mean": list(np.take(IMAGENET_MEAN, idx)), "std": list(np.take(IMAGENET_STD, idx))} if not bands else
            {"decode": f"{bands['dtype']} bands {', '.join(names)} (multi-band TIFF or .npy), as float", "scale": 1.0,
             "bands": list(names), "mean": list(np.take(bands["mean"], idx)), "std": list(np.take(bands["std"], idx))})
    return {"model": ckpt["model"], "checkpoint": ckpt["path"], "channels": combo_name(channels),
            "img_size": size, "input": "image", "output": "logits", "layout": "NCHW float32",
            "resize": eval_resize(size), "interpolation": "bilinear", "antialias": True, "crop": size, **norm,
            "classes": ckpt["classes"], "how": " ".join(sidecar.__doc__.split())}


def weights(ckpt, size, ema=True):
    """The checkpoint without what only resuming needs (optimizer, scheduler, RNG states): the
    weights of every channel set (their moving average, if the run kept one and ``ema``), the
    model's config, its classes and data, its training size. ``averaged`` says the weights are the
    moving average alone: the raw ones (``--no-ema``) are then not in the file."""
    kept = {k: ckpt[k] for k in ("model", "config", "classes", "data", "deployed", "averaged") if k in ckpt}
    told = {k: ckpt["args"][k] for k in ("teacher", "epochs", "seed") if k in ckpt["args"]}
    if ema and ckpt.get("ema"):
        return {**kept, "args": {**told, "img_size": size}, "state_dict": ckpt["ema"]["state_dict"], "averaged": True}
    return {**kept, "args": {**told, "img_size": size}, "state_dict": ckpt["state_dict"]}


def _temporary(path):
    """A name beside ``path`` that keeps its suffix (the exporters and runtimes go by it)."""
    return os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))


@cli
def main(argv=None):
    args = parse_args(argv)
    ckpt = load_checkpoint(best_of(args.checkpoint))
    model, bands = model_and_bands(ckpt, args.ema)
    model.eval()
    channels = parse_combo(args.channels or "all", bands)
    size = image_size(ckpt, args.img_size)
    out = args.out or os.path.join(os.path.dirname(ckpt["path"]), "export")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write into --out {out}: {exc.strerror or exc}") from None
    if "weights" in args.formats:
        path = os.path.join(out, f"{ckpt['model']}_weights.pt")
        save_atomic(weights(ckpt, size, args.ema), path)
        print(f"wrote {path} (weights, config and classes: every script's --checkpoint takes it; "
              f"{os.path.getsize(path) / 2 ** 20:.1f} MB against {os.path.getsize(ckpt['path']) / 2 ** 20:.1f} MB)")
    if set(args.formats) - {"weights"}:
        export_graphs(args, ckpt, model, channels, size, out)
    return 0


def export_graphs(args, ckpt, model, channels, size, out):
    """The ONNX and torch.export files for ``channels``, each checked against PyTorch on an image, and
    their sidecar. Everything is written beside its final name and moved there only once every file
    passed its check: a failed export leaves an earlier one in the folder whole, its .json still true."""
    net = deployed_for(model, channels)
    image, source = check_image(args, ckpt, size)
    bands = tuple(ckpt["bands"]["names"]) if ckpt.get("bands") else RGB
    x, _ = select(image, "+".join(channels), bands)
    stem = os.path.join(out, f"{ckpt['model']}_{combo_name(channels)}")
    written = {}
    try:
        with torch.no_grad():
            reference = model(x, channels) if hasattr(model, "for_channels") else model(x)
            if not torch.isfinite(reference).all():
                raise UserError(f"{ckpt['path']}: the model's logits on {source} are not finite; nothing exported")
            for fmt in [f for f in args.formats if f != "weights"]:  # written by main
                path = f"{stem}.onnx" if fmt == "onnx" else f"{stem}.pt2"
                written[path] = _temporary(path)
                diff = _export_one(fmt, net, x, reference, written[path])
                if diff is not None and not diff <= args.atol:
                    raise UserError(f"{path}: logits differ from PyTorch's by {diff:.2e} on {source} "
                                    f"(more than --atol {args.atol:g}); nothing exported")
                if diff is not None:
                    print(f"checked {path}: matches PyTorch within {diff:.1e} on {source} "
                          f"(top-1 {ckpt['classes'][int(reference.argmax(1))]})")
        written[f"{stem}.json"] = _temporary(f"{stem}.json")
        with open(written[f"{stem}.json"], "w") as f:
            json.dump(sidecar(ckpt, channels, size), f, indent=2)
        _publish(written)
    except OSError as exc:  # a full disk, a folder we may not write
        raise UserError(f"cannot write the export into {out}: {exc.strerror or exc}; an earlier export there "
                        "is kept") from None
    finally:
        for tmp in written.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def _export_one(fmt, net, x, reference, tmp):
    """Export ``net`` to ``tmp``; -> its logits' largest difference from ``reference`` on ``x``, or
    None when no runtime here can run the file."""
    # Two copies of the image: a batch of one would let the exporter fix the batch size at 1.
    example = x.expand(2, *x.shape[1:]).contiguous()
    run = (export_onnx if fmt == "onnx" else export_torch)(net, example, tmp)
    return None if run is None else (run(x) - reference).abs().max().item()


def _publish(written):
    """Every temporary file on the disk, then each moved to its name."""
    for tmp in written.values():
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    for path, tmp in written.items():
        os.replace(tmp, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
