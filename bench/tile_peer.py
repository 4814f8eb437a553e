#!/usr/bin/python3
"""Python peer of `patchwise tiles --read`: tile a whole-slide image as a CLAM / TIAToolbox user would.

    /usr/bin/python3 bench/tile_peer.py SLIDE [--tile 256] [--tile-stride 0] [--level 0]
        [--min-foreground 0.25] [--input 32] [--workers 2] [--json]

Mirrors the usual PyTorch pipeline: OpenSlide opens the slide, an Otsu mask on a thumbnail drops
background tiles, then a thread pool calls read_region per tile, converts to RGB, resizes to
--input and stacks batches of 64 into [b, input, input, 3] uint8 arrays, as a DataLoader would.
"seconds" times the reads, as patchwise's `tiles --read` does ("mask_seconds" the mask). Needs Debian's
python3-openslide, python3-numpy and python3-pil (run with /usr/bin/python3). Bad input: exit 2.
"""
import argparse
import concurrent.futures
import json
import math
import os
import resource
import sys
import time

import numpy as np
import openslide
from PIL import Image

BATCH = 64


def iround(v):
    """Round half away from zero (std::lround), not Python's banker's rounding."""
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def otsu(values):
    """Otsu threshold of uint8 values; class 0 is values <= t (OpenCV THRESH_OTSU convention)."""
    p = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    p /= p.sum()
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    return int(np.argmax(np.nan_to_num(between, nan=0.0, posinf=0.0)))


def foreground_mask(slide, tile, downsample):
    """Binary foreground mask of a thumbnail. No morphological clean-up: CLAM adds a median blur
    and a closing, but the peer keeps the cost of the mask negligible either way."""
    w0, h0 = slide.dimensions
    side = min(max(iround(8 * max(w0, h0) / (tile * downsample)), 256), 4096)
    thumb = slide.get_thumbnail((side, side)).convert("RGB")
    sat = np.asarray(thumb.convert("HSV"))[:, :, 1]
    if int(sat.max()) - int(sat.min()) >= 16:
        return sat > otsu(sat)
    grey = np.asarray(thumb.convert("L"))
    t = otsu(grey)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    above = int((border > t).sum())
    # Background is the side holding the majority of border pixels (ties: bright background).
    return grey <= t if 2 * above >= border.size else grey > t


def read_tile(slide, level, downsample, tile, size, box):
    x, y = box
    img = slide.read_region((iround(x * downsample), iround(y * downsample)), level, (tile, tile))
    img = img.convert("RGB").resize((size, size), Image.BOX if size < tile else Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--tile-stride", type=int, default=0, help="0 means --tile")
    ap.add_argument("--level", type=int, default=0)
    ap.add_argument("--min-foreground", type=float, default=0.25)
    ap.add_argument("--input", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.tile <= 0 or a.tile_stride < 0 or a.input <= 0 or a.workers <= 0 or a.level < 0:
        ap.error("--tile, --input and --workers must be positive; --tile-stride, --level >= 0")

    # 1. Open the slide.
    if not os.path.isfile(a.slide):
        print(f"tile_peer.py: {a.slide}: no such file", file=sys.stderr)
        return 2
    try:
        slide = openslide.OpenSlide(a.slide)
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, OSError) as e:
        print(f"tile_peer.py: {a.slide}: cannot open with OpenSlide ({e})", file=sys.stderr)
        return 2
    if a.level >= slide.level_count:
        print(f"tile_peer.py: {a.slide}: no level {a.level} (has {slide.level_count})", file=sys.stderr)
        return 2
    W, H = slide.level_dimensions[a.level]
    ds = slide.level_downsamples[a.level]
    T, S = a.tile, a.tile_stride or a.tile

    # 2. VALID tile lattice, row-major, in level coordinates.
    boxes = [(x, y) for y in range(0, H - T + 1, S) for x in range(0, W - T + 1, S)]

    # 3. Background filter on a thumbnail.
    t0 = time.perf_counter()
    kept = boxes
    if a.min_foreground > 0 and boxes:
        mask = foreground_mask(slide, T, ds)
        th, tw = mask.shape
        sx, sy = tw / W, th / H
        kept = []
        for x, y in boxes:
            x0, y0 = min(math.floor(x * sx), tw - 1), min(math.floor(y * sy), th - 1)
            x1, y1 = max(min(math.ceil((x + T) * sx), tw), x0 + 1), max(min(math.ceil((y + T) * sy), th), y0 + 1)
            if mask[y0:y1, x0:x1].mean() >= a.min_foreground:
                kept.append((x, y))
        kept = kept or boxes
    mask_seconds = time.perf_counter() - t0

    # 4. Read every kept tile with a thread pool, batch by batch.
    t_read = time.perf_counter()
    checksum = 0
    with concurrent.futures.ThreadPoolExecutor(a.workers) as pool:
        for i in range(0, len(kept), BATCH):
            batch = np.stack(list(pool.map(
                lambda b: read_tile(slide, a.level, ds, T, a.input, b), kept[i:i + BATCH])))
            checksum += int(batch.sum(dtype=np.uint64))
    t1 = time.perf_counter()
    seconds = t1 - t_read

    # 5. Report.
    n = len(kept)
    out = {"tiles": len(boxes), "kept": n, "seconds": seconds,
           "tiles_per_second": n / seconds if seconds > 0 else 0.0,
           "mask_seconds": mask_seconds,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "mean_pixel": checksum / (n * a.input * a.input * 3) if n else 0.0}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['kept']}/{out['tiles']} tiles read in {seconds:.3f} s "
              f"({out['tiles_per_second']:.1f} tiles/s, mask {mask_seconds:.3f} s), "
              f"peak RSS {out['peak_rss_mib']:.1f} MiB, mean pixel {out['mean_pixel']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
