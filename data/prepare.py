"""A prepared copy of a dataset: the same list files, every image re-encoded with its shorter
(or longer) side capped, so that each epoch decodes fewer pixels.

    python -m data.prepare SRC DST --max-side 256 [--side shorter|longer] [--quality 90] [--workers N]

Training at 224 px crops and resizes anyway; a full-size mini-ImageNet photo (about 500 x 375)
costs twice the decoding of one capped at 256 px on its shorter side. JPEG decoding at a reduced
scale (libjpeg's DCT scaling, PIL's ``draft``) makes the copy itself fast. Images already
within the cap are copied byte for byte. DST must not exist or be empty, and must not lie inside
SRC (the data may be read-only).
"""
import os
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

from PIL import ExifTags, Image, ImageOps
from tqdm import tqdm

from data.datasets import SPLITS, UNREADABLE, read_list, to_rgb
from data.loaders import default_workers
from utils.errors import Parser, UserError, at_least, cli


def parse_args(argv):
    p = Parser(description=__doc__)
    p.add_argument("src", help="data root with train/val/test.txt and images/")
    p.add_argument("dst", help="where the prepared copy goes")
    p.add_argument("--max-side", type=at_least(8), required=True, help="cap in pixels")
    p.add_argument("--side", default="shorter", choices=["shorter", "longer"], help="which side the cap applies to")
    p.add_argument("--quality", type=at_least(50), default=90, help="JPEG quality of re-encoded images")
    p.add_argument("--workers", type=at_least(1), default=default_workers())
    return p.parse_args(argv)


def prepare_one(job):
    """Re-encode one image (or copy it when within the cap); -> bytes written."""
    src, dst, cap, side, quality = job
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        return _prepare_one(src, dst, cap, side, quality)
    except UNREADABLE as exc:
        raise UserError(f"cannot read image {src}: {exc}") from None


def _prepare_one(src, dst, cap, side, quality):
    with Image.open(src) as img:
        # Sizes as the image is seen: an EXIF orientation of 5-8 turns it a quarter.
        turned = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
        seen = img.size[::-1] if turned else img.size
        measure = min if side == "shorter" else max
        scale = cap / measure(seen)
        if scale >= 1:
            shutil.copyfile(src, dst)  # the orientation tag travels with the file
            return os.path.getsize(dst)
        size = tuple(max(1, round(v * scale)) for v in seen)
        img.draft("RGB", size[::-1] if turned else size)  # JPEG: decode at the nearest larger DCT scale
        # The pixels are turned upright: the copy is written without the tag that said how.
        out = to_rgb(ImageOps.exif_transpose(img), src).resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    out.save(dst, "JPEG", quality=quality)
    return os.path.getsize(dst)


@cli
def main(argv=None):
    args = parse_args(argv)
    src, dst = os.path.abspath(args.src), os.path.abspath(args.dst)
    if not os.path.isdir(src):
        raise UserError(f"data root not found: {args.src}")
    # Compared after links are resolved: a link must not lead the copy into the data it reads.
    real = os.path.realpath(dst)
    for folder in (src, os.path.join(src, "images")):
        inside = os.path.realpath(folder)
        if real == inside or real.startswith(inside + os.sep):
            raise UserError(f"{args.dst} lies inside {folder} (links resolved): write the prepared copy elsewhere")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise UserError(f"{args.dst} is a file, not a folder")
    if os.path.exists(dst) and os.listdir(dst):
        raise UserError(f"{args.dst} is not empty")
    jobs, lists = {}, [s for s in SPLITS if os.path.exists(os.path.join(src, f"{s}.txt"))]
    for split in lists:
        for rel, _, lineno in read_list(os.path.join(src, f"{split}.txt")):
            path = os.path.join(src, rel)
            if not os.path.isfile(path):
                raise UserError(f"missing image {path} (listed at {src}/{split}.txt:{lineno})")
            jobs[rel] = (path, os.path.join(dst, rel), args.max_side, args.side, args.quality)
    existed = os.path.isdir(dst)
    os.makedirs(dst, exist_ok=True)
    try:
        for name in [f"{s}.txt" for s in lists] + ["classes.txt"]:
            if os.path.exists(os.path.join(src, name)):
                shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
        with ProcessPoolExecutor(args.workers, initializer=signal.signal,
                                 initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:  # Ctrl-C is the parent's
            written = sum(tqdm(pool.map(prepare_one, jobs.values(), chunksize=16), total=len(jobs),
                               desc="prepare"))
    except BaseException as exc:  # a copy cut short passes for a whole one: it goes
        shutil.rmtree(dst, ignore_errors=True)
        if existed:  # the empty folder the user gave stays
            os.makedirs(dst, exist_ok=True)
        if isinstance(exc, KeyboardInterrupt):
            print(f"interrupted; the unfinished copy {args.dst} was removed", file=sys.stderr)
            sys.exit(130)
        raise
    before = sum(os.path.getsize(j[0]) for j in jobs.values())
    print(f"prepared {len(jobs)} images into {args.dst} ({args.side} side at most {args.max_side} px): "
          f"{before / 2 ** 20:.1f} MB -> {written / 2 ** 20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
