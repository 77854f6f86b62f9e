"""The demo catalog's photos: Twemoji artwork tinted, placed on a seller's background, marked.

Split from catalog/demo.py (which builds the products, sellers and titles and writes the catalog);
everything here is a function of the random generator it is given, so the same seed gives the
same JPEG bytes.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from eclip.catalog import demo_vocab as vocab


def pick(options: tuple[str, ...] | list[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


@lru_cache(maxsize=None)
def _art_array(png: Path) -> np.ndarray:
    with Image.open(png) as img:
        return np.asarray(img.convert("RGBA"), dtype=np.float32)


def tint_artwork(png: Path, color: str) -> Image.Image:
    """The artwork recoloured in shades of ``color``: its shading kept, its hue replaced.

    Luminance, stretched to the artwork's own range with its main tone moved to the middle, maps
    dark pixels to a dark shade of the colour, mid-tones to the colour itself and light pixels to a
    light tint of it, so the shape stays recognisable and the colour is what one sees.
    """
    rgba = _art_array(png)
    anchor = np.array(vocab.COLORS[color][0], dtype=np.float32)
    lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    opaque = rgba[..., 3] > 32
    if opaque.any():
        lo, mid, hi = np.percentile(lum[opaque], [3, 50, 97])
        lo, hi = min(lo, mid - 0.15), max(hi, mid + 0.15)  # flat artwork is not binarised
        lum = np.clip((lum - lo) / (hi - lo), 0.0, 1.0)
        median = float(np.clip((mid - lo) / (hi - lo), 0.05, 0.95))
        lum = lum ** (math.log(0.45) / math.log(median))  # the main tone becomes the colour itself
    dark, light = anchor * 0.3, anchor + (255.0 - anchor) * 0.6
    lum = lum[..., None]
    rgb = np.where(lum < 0.5, dark + (anchor - dark) * (2 * lum),
                   anchor + (light - anchor) * (2 * lum - 1))
    out = np.concatenate([rgb, rgba[..., 3:]], axis=-1)
    return Image.fromarray(np.round(out).astype(np.uint8), "RGBA")



@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _random_color(rng: np.random.Generator, light: bool) -> np.ndarray:
    if light:
        base = rng.uniform(215, 255)
        return np.clip(base + rng.normal(0, 6, size=3), 0, 255)
    return rng.uniform(30, 255, size=3)


def _background(size: int, seller, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 float background: studio white, a colour, a gradient or a light texture."""
    kind = int(rng.choice(4, p=np.asarray(seller.bg_p) / sum(seller.bg_p)))
    if kind in (0, 1):
        return np.broadcast_to(_random_color(rng, light=kind == 0), (size, size, 3)).copy()
    if kind == 2:
        start, end = _random_color(rng, rng.random() < 0.5), _random_color(rng, rng.random() < 0.5)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return start + (end - start) * t[..., None]
    base = _random_color(rng, light=rng.random() < 0.7)
    coarse = rng.normal(0, rng.uniform(6, 16), size=(max(size // 8, 2), max(size // 8, 2), 3))
    blotches = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
                          .resize((size, size), Image.BILINEAR), dtype=np.float32) - 128
    grain = rng.normal(0, rng.uniform(2, 6), size=(size, size, 1))
    return base + blotches + grain


def _place_copies(canvas: Image.Image, art: Image.Image, pack: int,
                  rng: np.random.Generator) -> None:
    """Draw ``pack`` copies of the artwork, scaled, rotated and placed with jitter."""
    size = canvas.width
    scale = rng.uniform(0.5, 0.8) * {1: 1.0, 2: 0.62, 3: 0.48}[pack]
    if pack == 1:
        offsets = [(0.0, 0.0)]
    elif pack == 2:
        offsets = ([(-0.24, 0.0), (0.24, 0.0)] if rng.random() < 0.7
                   else [(-0.2, -0.18), (0.2, 0.18)])
    else:
        offsets = ([(-0.31, 0.0), (0.0, 0.0), (0.31, 0.0)] if rng.random() < 0.5
                   else [(-0.22, 0.17), (0.22, 0.17), (0.0, -0.2)])
    center = np.array([0.5, 0.5]) + rng.uniform(-0.08, 0.08, size=2)
    shadow_strength = rng.uniform(0.25, 0.5) if rng.random() < 0.6 else 0.0
    for dx, dy in offsets:
        side = max(int(round(size * scale * rng.uniform(0.95, 1.05))), 4)
        copy = art.resize((side, side), Image.BICUBIC)
        copy = copy.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, expand=True)
        cx = (center[0] + dx * rng.uniform(0.9, 1.1)) * size
        cy = (center[1] + dy * rng.uniform(0.9, 1.1)) * size
        x, y = int(round(cx - copy.width / 2)), int(round(cy - copy.height / 2))
        if shadow_strength:  # a soft drop shadow, as in studio photos; it outlines light products
            alpha = copy.getchannel("A").filter(ImageFilter.GaussianBlur(max(side / 25, 1)))
            shadow = Image.new("RGBA", copy.size, (0, 0, 0, 0))
            shadow.putalpha(alpha.point(lambda a: int(a * shadow_strength)))
            shift = max(side // 18, 1)
            canvas.alpha_composite(shadow, (x + shift, y + shift))
        canvas.alpha_composite(copy, (x, y))


def _draw_marks(img: Image.Image, seller, rng: np.random.Generator) -> Image.Image:
    """A promo badge in a corner and/or the seller's name as a translucent watermark."""
    size = img.width
    if rng.random() < seller.p_badge:
        draw = ImageDraw.Draw(img)
        text = pick(vocab.BADGES, rng)
        font = _font(max(size // 10, 8))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(size // 40, 1)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        x = pad if rng.random() < 0.5 else size - w - pad
        y = pad if rng.random() < 0.5 else size - h - pad
        fill = pick(vocab.BADGE_COLORS, rng)
        draw.rectangle((x, y, x + w, y + h), fill=fill)
        draw.text((x + pad - left, y + pad - top), text, font=font, fill=(255, 255, 255, 255))
    if rng.random() < seller.p_watermark:
        overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        font = _font(max(size // 12, 8))
        shade = int(pick((255, 0), rng))
        y = int(size * rng.uniform(0.55, 0.85))
        draw.text((int(size * rng.uniform(0.02, 0.3)), y), seller.sid, font=font,
                  fill=(shade, shade, shade, int(rng.integers(70, 140))))
        img = Image.alpha_composite(img, overlay)
    return img


def render_photo(art: Image.Image, pack: int, seller, size: int, rng: np.random.Generator) -> bytes:
    """One listing photo as JPEG bytes: ``pack`` copies of the artwork on the seller's background,
    with the seller's marks (``seller``: catalog/demo.py's seller, read for ``bg_p``, ``p_badge``,
    ``p_watermark`` and ``sid``)."""
    background = np.clip(_background(size, seller, rng), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(background, "RGB").convert("RGBA")
    _place_copies(canvas, art, pack, rng)
    if rng.random() < 0.5:
        side = rng.uniform(0.82, 1.0) * size
        x0, y0 = rng.uniform(0, size - side, size=2)
        canvas = canvas.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    pixels = np.asarray(canvas, dtype=np.float32)[..., :3]
    gray = pixels.mean(axis=-1, keepdims=True)
    pixels = gray + (pixels - gray) * rng.uniform(0.85, 1.15)  # saturation
    pixels = pixels.mean() + (pixels - pixels.mean()) * rng.uniform(0.9, 1.1)  # contrast
    pixels = pixels * rng.uniform(0.92, 1.08)  # brightness
    img = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    img = _draw_marks(img, seller, rng).convert("RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)), subsampling="4:2:0",
             optimize=False, progressive=False)
    return buffer.getvalue()
