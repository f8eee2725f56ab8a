"""A digits-like image folder to try edgekd on without data of one's own (and for tests and benchmarks).

``write_digits_folder(root, per_class, size, mode)`` renders the digits 0-9 with Pillow's bundled
font (the same glyphs on every machine) at random scale, stroke width, rotation and offset, with
random foreground/background colours (RGB) or grey levels (L) and pixel noise, and saves them as PNG
files in ``root/<digit>/<n>.png``: the layout ``data.dataset: image_folder`` reads. Seeded, so a
folder is a pure function of its arguments.

    python -m edgekd.data.digits /tmp/digits --per-class 200 --size 32 --mode RGB
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .files import pil_image

MODES = ("RGB", "L")


def render_digit(digit: int, size: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """One digit as uint8 [H, W] (L) or [H, W, 3] (RGB), randomly placed, rotated and noised."""
    Image = pil_image()
    from PIL import ImageDraw, ImageFont

    canvas = 2 * size  # draw large, rotate, then downsample: smooth edges
    font = ImageFont.load_default(size=int(canvas * rng.uniform(0.55, 0.8)))
    glyph = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(glyph)
    stroke = int(rng.integers(0, max(2, canvas // 16)))
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font, stroke_width=stroke)
    max_dx = canvas * 0.12
    x = (canvas - (right - left)) / 2 - left + rng.uniform(-max_dx, max_dx)
    y = (canvas - (bottom - top)) / 2 - top + rng.uniform(-max_dx, max_dx)
    draw.text((x, y), str(digit), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    glyph = glyph.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
    alpha = np.asarray(glyph.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)[..., None] / 255.0
    channels = 3 if mode == "RGB" else 1
    bg = rng.uniform(0, 100, channels)
    fg = rng.uniform(155, 255, channels)
    if rng.random() < 0.5:  # light-on-dark and dark-on-light
        bg, fg = fg, bg
    img = bg * (1 - alpha) + fg * alpha + rng.normal(0, rng.uniform(0, 12), (size, size, channels))
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return img[..., 0] if mode == "L" else img


def write_digits_folder(root: str | Path, per_class: int, size: int = 32, mode: str = "RGB", seed: int = 0) -> Path:
    """Write ``10 x per_class`` PNG digits into ``root/<digit>/<n>.png``; returns ``root``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    Image = pil_image()
    root = Path(root)
    rng = np.random.default_rng(seed)
    for digit in range(10):
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            Image.fromarray(render_digit(digit, size, mode, rng), mode=mode).save(folder / f"{n:05d}.png")
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edgekd.data.digits", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder to write (root/<digit>/<n>.png)")
    p.add_argument("--per-class", type=int, default=200, help="images per digit (default 200: 2 000 images)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--mode", choices=MODES, default="RGB", help="RGB or L (grayscale)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = write_digits_folder(a.root, a.per_class, a.size, a.mode, a.seed)
    print(f"wrote {10 * a.per_class} images to {out}")


if __name__ == "__main__":
    main()
