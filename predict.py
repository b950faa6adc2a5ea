"""Classify image files with a trained checkpoint: the top-k classes and their probabilities.

    python predict.py --checkpoint runs/dwg/best.pt photo.jpg more/ --channels RG --top 5

Folders are searched for images (JPEG, PNG, BMP, WebP, TIFF). Images go through the evaluation
transform of the checkpoint's training size; a Task 1 model sees only the channels named by
``--channels`` (any combination of R, G, B, in that order). Class names come from the
checkpoint (``classes.txt`` of its data, or the wnids).
"""
import argparse
import os
import sys

import torch

from data.channels import parse_combo, select
from data.datasets import load_image
from models import deploy
from utils.checkpoint import load_checkpoint, model_from_checkpoint
from utils.errors import Parser, UserError, at_least, cli

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def parse_args(argv):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt, or a run folder")
    p.add_argument("--channels", default="RGB", help="channels the model sees, e.g. RG or B (Task 1 models)")
    p.add_argument("--top", type=at_least(1), default=5)
    p.add_argument("--img-size", type=at_least(8), default=None, help="default: the checkpoint's training size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
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


@torch.no_grad()
def predict(model, files, combo, img_size, top, device):
    """-> one list of (class index, probability) pairs per file, best first."""
    out = []
    for path in files:
        x = load_image(path, img_size).to(device)
        x, names = select(x, combo, getattr(model, "vocab", "RGB"))
        probs = model(x, names).softmax(1)[0]
        p, idx = probs.topk(min(top, len(probs)))
        out.append(list(zip(idx.tolist(), p.tolist())))
    return out


@cli
def main(argv=None):
    args = parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    model = deploy(model_from_checkpoint(ckpt)).to(args.device).eval()
    combo = "".join(parse_combo(args.channels, getattr(model, "vocab", "RGB")))
    files = image_files(args.images)
    size = args.img_size or ckpt["args"]["img_size"]
    for path, ranked in zip(files, predict(model, files, combo, size, args.top, args.device)):
        best = ", ".join(f"{ckpt['classes'][i]} {p:.1%}" for i, p in ranked)
        print(f"{path}: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
