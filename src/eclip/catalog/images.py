"""Safe image decoding and the model's image transforms (PIL + numpy + torch; no torchvision).

``load_image`` turns any product photo a marketplace may hold into a fully decoded RGB image, or
raises :class:`~eclip.errors.ImageError` naming the file and the reason. It never lets another
exception out, and it guards against hostile files without touching PIL's global settings:

* only common photo formats are opened (JPEG/MPO, PNG/APNG, GIF, WebP, BMP, TIFF, AVIF where PIL has
  it), so no file can reach a Ghostscript or other exotic decoder;
* the dimensions from the header are checked before any pixel is decoded: an image of more than
  ``max_pixels`` (``data.max_pixels``) is decoded at reduced size, a JPEG directly at 1/2, 1/4 or
  1/8 scale (``Image.draft``), another format whole and then reduced (``Image.reduce``) to at most
  ``max_pixels``; one whose decoding would need more than ``DECODE_FACTOR`` x ``max_pixels`` pixels
  is refused as too large (so is what PIL's own decompression-bomb error refuses while opening,
  above about 179 megapixels; PIL's ``DecompressionBombWarning`` is silenced, eclip reports its own);
* truncated files are reported, never half-loaded, even if other code has set
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``: reads past the end of the file are watched;
* colour modes are converted with care: transparency is composited onto white, 16/32-bit and float
  greyscale are scaled (not clipped) to 8 bit, the first frame of an animation is used and the EXIF
  orientation is applied.

``ImageTransform`` maps a decoded image to the normalised (3, size, size) tensor a vision tower eats;
loaders use its two halves apart: ``pixels`` (uint8, in the loader's workers) and ``normalize`` (a
whole batch, on the training device), which together give exactly the same values.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from eclip.catalog.config import DEFAULT_MAX_PIXELS
from eclip.catalog.filters import RESAMPLE_FILTERS, RESIZE_MODES
from eclip.catalog.paths import BAD_PATH, path_problem, printable
from eclip.errors import ConfigError, ImageError

# An image of more than max_pixels is decoded at reduced size; the pixels decoding it takes (the
# whole image, or a JPEG's 1/2 to 1/8 scale draft) may be at most this many times max_pixels.
DECODE_FACTOR = 4


_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})



class _Rejected(Exception):
    """Internal: why a file is not a usable image (the text ``check_image`` returns)."""


class _WatchedFile:
    """A read-only file wrapper that notes a read at the end of the file (a truncated image)."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.read_past_end = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if not data and size != 0:
            self.read_past_end = True
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


@cache
def _allowed_formats() -> tuple[str, ...]:
    Image.init()  # registers the bundled plugins (idempotent), so availability can be asked
    return tuple(f for f in _FORMATS if f in Image.OPEN)


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
               root: str | os.PathLike[str] | None = None) -> Image.Image:
    """Decode ``path`` fully into an RGB image, or raise ImageError saying which file and why.

    With ``root``, a path that resolves outside it (links followed) is refused before anything is
    opened (:func:`eclip.catalog.paths.contained`)."""
    try:
        return _decode(path, max_pixels, reduced=False, root=root)
    except _Rejected as exc:
        raise ImageError(f"cannot use image {printable(path)}: {exc}") from None


def check_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                root: str | os.PathLike[str] | None = None) -> str | None:
    """``None`` when ``load_image(path)`` would succeed, otherwise the reason (``"kind: detail"``).

    The whole file is decoded (so truncation and corrupt data are found), JPEGs at 1/8 scale, which
    reads every byte but skips most of the work. ``root`` as for :func:`load_image`.
    """
    try:
        _decode(path, max_pixels, reduced=True, root=root)
    except _Rejected as exc:
        return str(exc)
    return None


def _decode(path: str | os.PathLike[str], max_pixels: int, *, reduced: bool,
            root: str | os.PathLike[str] | None = None) -> Image.Image:
    if "\0" in os.fspath(path):  # the OS cannot name such a file (Python raises ValueError)
        raise _Rejected(f"{BAD_PATH}: the path contains a NUL byte")
    if root is not None:
        problem = path_problem(path, root)
        if problem is not None:
            raise _Rejected(f"{problem.kind}: {problem.detail}")
    file = Path(path)
    try:
        stat = file.stat()
    except FileNotFoundError:
        raise _Rejected("file not found") from None
    except (OSError, ValueError) as exc:
        raise _Rejected(f"cannot open file: {getattr(exc, 'strerror', None) or exc}") from None
    if not file.is_file():
        raise _Rejected("not a file")
    if stat.st_size == 0:
        raise _Rejected("empty file: 0 bytes")
    try:
        raw = open(file, "rb")
    except OSError as exc:
        raise _Rejected(f"cannot open file: {exc.strerror or exc}") from None
    with raw:
        watched = _WatchedFile(raw)
        image = _open_and_load(watched, max_pixels, reduced)
        if ImageFile.LOAD_TRUNCATED_IMAGES and watched.read_past_end:
            # PIL was told (by someone) to accept truncated files; eclip does not.
            raise _Rejected("truncated image: the file ends before the image data does")
    _apply_orientation(image)
    try:
        return to_rgb(image)
    except Exception as exc:  # noqa: BLE001 - PIL/numpy refuse exotic modes in various ways
        raise _Rejected(f"unsupported colour mode: {image.mode} ({exc})") from None


def _open_and_load(fp: _WatchedFile, max_pixels: int, reduced: bool) -> Image.Image:
    # PIL warns for every image above about 89 megapixels (while opening, and for some formats
    # while decoding); eclip decides about size itself and reports it, so the warning is dropped
    # here, for PIL's DecompressionBombWarning only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _open_and_load_quietly(fp, max_pixels, reduced)


def _open_and_load_quietly(fp: _WatchedFile, max_pixels: int, reduced: bool) -> Image.Image:
    try:
        image = Image.open(fp, formats=_allowed_formats())
    except UnidentifiedImageError:
        begun = _signature(fp)
        if begun is not None:  # a photo cut short (or mangled) before the end of its header
            what = "truncated image" if fp.read_past_end else "corrupt image header"
            raise _Rejected(f"{what}: the file begins as a {begun} but its header cannot be read "
                            f"({'it ends too soon' if fp.read_past_end else 'unreadable'})"
                            ) from None
        raise _Rejected("not an image file: unknown or unsupported format "
                        f"(accepted: {', '.join(_allowed_formats())})") from None
    except Image.DecompressionBombError as exc:
        raise _Rejected(f"too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a hostile header may raise anything; report it
        raise _failure("corrupt image header", exc) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise _Rejected(f"zero-size image: {width}x{height}")
    jpeg = image.format in ("JPEG", "MPO")
    scale = _draft_scale(width, height, max_pixels) if jpeg else 1
    decoded = math.ceil(width / scale) * math.ceil(height / scale)
    if decoded > DECODE_FACTOR * max_pixels:
        what = f"even at 1/{scale} scale " if scale > 1 else ""
        raise _Rejected(f"too large: {width}x{height} = {width * height} pixels; decoding it "
                        f"{what}takes {decoded}, over {DECODE_FACTOR} x max_pixels={max_pixels} "
                        f"(data.max_pixels)")
    fp.read_past_end = False  # only reads while decoding pixels count
    try:
        if jpeg and (reduced or scale > 1):  # a check decodes every byte at 1/8 scale
            image.draft(image.mode, (1, 1) if reduced else (width // scale, height // scale))
        image.load()
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, ...
        raise _failure("corrupt image data", exc) from None
    return _reduce_to(image, max_pixels)


# the first bytes of the formats eclip accepts: a file that begins so and still cannot be opened
# was cut short (or damaged), it is not "another format"
_SIGNATURES = ((b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(fp: _WatchedFile) -> str | None:
    """The accepted format whose signature the file begins with (WebP / AVIF by their box), if any."""
    try:
        fp.seek(0)
        head = fp._raw.read(12)
        fp.seek(0, os.SEEK_END)
        size = fp.tell()
    except (OSError, ValueError):
        return None
    if head[:4] == b"RIFF" and (len(head) < 12 or head[8:12] == b"WEBP"):
        return "WebP"
    if head[4:8] == b"ftyp":
        return "AVIF"
    for magic, name in _SIGNATURES:
        if len(head) >= 2 and head[:len(magic)] == magic[:len(head)]:
            if len(head) < len(magic) or size < 64:
                fp.read_past_end = True  # nothing but the first bytes of a header: cut short
            return name
    return None


def _draft_scale(width: int, height: int, max_pixels: int) -> int:
    """The JPEG decoding scale (1, 2, 4 or 8) that first brings the image to ``max_pixels``."""
    for scale in (1, 2, 4, 8):
        if math.ceil(width / scale) * math.ceil(height / scale) <= max_pixels:
            return scale
    return 8


def _reduce_to(image: Image.Image, max_pixels: int) -> Image.Image:
    """A decoded image of more than ``max_pixels`` reduced by the smallest integer factor that
    brings it to ``max_pixels`` (box average; nearest pixels for palette and 16-bit images)."""
    width, height = image.size
    if width * height <= max_pixels:
        return image
    factor = max(2, math.ceil(math.sqrt(width * height / max_pixels)))
    while math.ceil(width / factor) * math.ceil(height / factor) > max_pixels:
        factor += 1
    try:
        if image.mode == "1":
            image = image.convert("L")  # one byte a pixel either way; averaged to grey
        if image.mode not in ("P", "PA"):  # averaging palette indices mixes unrelated colours
            return image.reduce(factor)
    except (ValueError, OSError):  # a mode reduce() does not handle (I;16, ...)
        pass
    size = (math.ceil(width / factor), math.ceil(height / factor))
    try:
        return image.resize(size, Image.Resampling.NEAREST)
    except Exception as exc:  # noqa: BLE001 - an exotic mode PIL cannot resize
        raise _Rejected(f"too large: {width}x{height} and its mode {image.mode} cannot be "
                        f"reduced ({exc})") from None


def _failure(kind: str, exc: Exception) -> _Rejected:
    """PIL says "truncated" in various ways (while opening or decoding); name it so."""
    message = str(exc)
    if "truncated" in message.lower():
        return _Rejected(f"truncated image: {message}")
    return _Rejected(f"{kind}: {type(exc).__name__}: {message}")


def _apply_orientation(image: Image.Image) -> None:
    """Rotate/flip as the EXIF orientation says (and drop the tag, so it is not applied twice).

    A broken EXIF block is ignored: it is metadata and must not make a good photo unusable.
    """
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - malformed EXIF raises anything from struct.error to KeyError
        pass


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to RGB (transparency composited onto white)."""
    mode = image.mode
    if mode in _WIDE_GREY_MODES:
        grey = _grey_to_uint8(np.asarray(image), mode)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16/32-bit integer or float greyscale to 0..255.

    16-bit modes use their full range (65535 -> 255). For 32-bit integers and floats the range is
    ambiguous, so the smallest usual ceiling that holds the data is taken (floats: 1.0, then 255,
    then 65535; integers: 255, then 65535), with the data's own maximum beyond those; data with
    negative values is stretched from its minimum to its maximum.
    """
    data = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        low, top = float(data.min()), float(data.max())
        if low < 0:
            high = top
        else:
            low = 0.0
            ceilings = (1.0, 255.0, 65535.0) if mode == "F" else (255.0, 65535.0)
            high = next((c for c in ceilings if top <= c), top)
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = np.rint((data - low) * (255.0 / (high - low)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised float tensor (3, size, size) for a vision tower.

    Evaluation: the centred square of the image (shorter side) resized to ``size`` (bicubic), i.e.
    resize-shorter-side then centre-crop. Training: a random crop whose area is a fraction in
    ``scale`` of the image and whose aspect ratio lies in ``ratio`` (log-uniform), resized to
    ``size``. There are no flips: mirrored text or logos would change what a listing says. Values
    are ``(x / 255 - mean) / std`` per channel. The same generator state gives the same crop.

    ``resize`` picks how an evaluation image becomes ``size`` x ``size`` (training always uses the
    random crop above, resized with ``crop_resample``):

    * ``"crop"`` (default): the centred square (shorter side) resized to ``size`` in one step;
    * ``"shortest_edge"``: the whole image resized so that its shorter side is ``resize_size``
      (default ``size``; the longer side ``int(resize_size * long / short)``), then the centred
      ``size`` x ``size`` crop at integer offsets ``(H - size) // 2`` -- what the transformers
      ``CLIPImageProcessor`` does (``size.shortest_edge`` + ``crop_size``);
    * ``"squash"``: the whole image resized to ``size`` x ``size`` whatever its aspect ratio -- what
      ``SiglipImageProcessor`` does (``size.height`` = ``size.width``, no crop); with a
      ``resize_size`` the square is that large and the centred ``size`` crop is taken from it.

    ``resample`` is the PIL filter of evaluation (``bicubic``, ``bilinear``, ``nearest``,
    ``lanczos``, ``box``, ``hamming``); ``crop_resample`` that of the training crop: ``bilinear`` by
    default (what torchvision's ``RandomResizedCrop`` uses; PIL's bilinear resize reads half the
    source pixels of its bicubic one and takes about half the time, most of a loader's work;
    ``"bicubic"`` restores the crops of eclip before issue 15 exactly). In the two transformers-style modes values are computed as the transformers PIL
    image processors do (``uint8 * (1/255)`` in float64 cast to float32, then ``(x - mean) / std`` in
    float32), so the pixels equal theirs exactly (tests compare with the processors). The
    torchvision backend of those processors (used when torchvision is installed) resizes with
    its own kernels and is not reproduced bit for bit.

    :meth:`pixels` stops before normalisation (uint8, what loaders hand out) and :meth:`normalize`
    finishes a batch of them on any device; ``__call__`` is the two together.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: bool = False
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (4 / 5, 5 / 4)
    resize: str = "crop"
    resample: str = "bicubic"
    resize_size: int | None = None
    crop_resample: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("mean", "std", "scale", "ratio"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigError(f"image transform: size must be a positive integer, got {self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"image transform: resize must be one of {', '.join(RESIZE_MODES)}, "
                              f"got {self.resize!r}")
        for name in ("resample", "crop_resample"):
            if getattr(self, name) not in RESAMPLE_FILTERS:
                raise ConfigError(f"image transform: {name} must be one of "
                                  f"{', '.join(RESAMPLE_FILTERS)}, got {getattr(self, name)!r}")
        if self.resize_size is not None and (
                not isinstance(self.resize_size, int) or isinstance(self.resize_size, bool)
                or self.resize_size < self.size):
            raise ConfigError(f"image transform: resize_size must be an integer >= size ({self.size}) "
                              f"(the crop is taken from the resized image), got {self.resize_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("image transform: mean and std need one value per RGB channel")
        if min(self.std) <= 0:
            raise ConfigError(f"image transform: std values must be > 0, got {self.std}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"image transform: scale must satisfy 0 < min <= max <= 1, "
                              f"got {self.scale}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"image transform: ratio must satisfy 0 < min <= max, got {self.ratio}")

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.normalize(self.pixels(img, generator))

    def pixels(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """The image as the tower will see it, before normalisation: a uint8 (3, size, size) tensor
        (a channels-last view; ``torch.stack`` makes batches of it). ``normalize`` of it equals
        ``self(img, generator)`` exactly; loaders hand out these (4x fewer bytes to pickle between
        worker processes, pin and copy) and normalise whole batches on the device."""
        if img.mode != "RGB":
            img = to_rgb(img)
        if self.resize != "crop" and not self.train:
            return _chw(self._processor_style(img))
        box = self.crop_box(img.size, generator)
        # one resampling pass over the crop box (no separate crop copy); uint8 throughout
        resample = self.crop_resample if self.train else self.resample
        return _chw(img.resize((self.size, self.size), RESAMPLE_FILTERS[resample], box=box))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (..., 3, H, W) from :meth:`pixels` -> the float32 values the tower eats, on
        the pixels' device, in standard (contiguous) layout.

        The arithmetic is the per-image float path's, element by element (``x / 255`` in float32,
        or the transformers processors' ``x * (1/255)`` in float64 cast to float32, then
        ``(x - mean) / std`` in float32; divisors are tensors on the device, never scalars that a
        kernel may turn into a reciprocal), so every value equals :meth:`value_table`'s entry for
        its channel and input, whatever the batch, the device or the memory layout (tests pin it).
        """
        if pixels.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 pixels, got {pixels.dtype}")
        if pixels.dim() < 3 or pixels.shape[-3] != 3:
            raise ValueError(f"normalize expects (..., 3, H, W) pixels, got {tuple(pixels.shape)}")
        scale_by, mean, std = _normal_constants(self.mean, self.std, self._float32_scaling,
                                                pixels.device)
        if self._float32_scaling:
            values = pixels.to(torch.float32, memory_format=torch.contiguous_format)
            values.div_(scale_by)
        else:
            values = pixels.to(torch.float64, memory_format=torch.contiguous_format)
            values = values.mul_(scale_by).to(torch.float32)
        return values.sub_(mean).div_(std)

    def value_table(self) -> torch.Tensor:
        """(3, 256) float32: the normalised value of each channel's input 0..255, computed with numpy
        as the per-image float path computed it (the reference :meth:`normalize` is tested against)."""
        return _value_table(self.mean, self.std, self._float32_scaling).clone()

    @property
    def _float32_scaling(self) -> bool:
        return self.train or self.resize == "crop"

    def _processor_style(self, img: Image.Image) -> Image.Image:
        """``shortest_edge`` / ``squash`` evaluation: the resized image, its centred crop."""
        width, height = img.size
        if self.resize == "squash":
            new_w = new_h = self.resize_size or self.size
        else:
            short_target = self.resize_size or self.size
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = short_target, int(short_target * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        resized = img.resize((new_w, new_h), resample=RESAMPLE_FILTERS[self.resample])
        if (new_w, new_h) != (self.size, self.size):
            top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
            resized = resized.crop((left, top, left + self.size, top + self.size))
        return resized

    def crop_box(self, image_size: tuple[int, int], generator: torch.Generator | None = None
                 ) -> tuple[float, float, float, float]:
        """The region ``(left, top, right, bottom)`` of an image of ``image_size`` (width, height)
        that is resized to the output: random when training, the centred square otherwise."""
        width, height = image_size
        if not self.train:
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            return left, top, left + side, top + side
        area = width * height
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u_area, u_ratio, u_left, u_top = torch.rand(4, generator=generator).tolist()
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u_area)
            aspect = math.exp(log_low + (log_high - log_low) * u_ratio)
            crop_w, crop_h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if crop_w <= width and crop_h <= height:
                left, top = (width - crop_w) * u_left, (height - crop_h) * u_top
                return left, top, left + crop_w, top + crop_h
        # No sampled crop fits (a very elongated image): the largest centred crop within ``ratio``.
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        crop_w, crop_h = min(width, height * aspect), min(height, width / aspect)
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        return left, top, left + crop_w, top + crop_h

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings, e.g. for a model's preprocessor config."""
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "train": self.train, "scale": list(self.scale), "ratio": list(self.ratio),
                "resize": self.resize, "resample": self.resample, "resize_size": self.resize_size,
                "crop_resample": self.crop_resample}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageTransform":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"image transform: unknown setting(s) {unknown}; "
                              f"known settings are {sorted(known)}")
        missing = sorted({"size", "mean", "std"} - set(data))
        if missing:
            raise ConfigError(f"image transform: missing setting(s) {missing}")
        return cls(**data)


@cache
def _normal_constants(mean: tuple[float, float, float], std: tuple[float, float, float],
                      float32_scaling: bool, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(3, 1, 1) tensors on ``device``: the 1/255 step (a divisor of 255 in float32, or the
    multiplier 1/255 in float64), mean and std (float32)."""
    if float32_scaling:
        scale_by = torch.full((3, 1, 1), 255.0, dtype=torch.float32)
    else:
        scale_by = torch.full((3, 1, 1), 1 / 255, dtype=torch.float64)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return scale_by.to(device), mean_t.to(device), std_t.to(device)


def _chw(image: Image.Image) -> torch.Tensor:
    """An RGB image's bytes as a uint8 (3, H, W) view (channels last in memory; one copy of the
    bytes, no per-pixel conversion)."""
    width, height = image.size
    flat = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return flat.view(height, width, 3).permute(2, 0, 1)


@cache
def _value_table(mean: tuple[float, float, float], std: tuple[float, float, float],
                 float32_scaling: bool) -> torch.Tensor:
    """What each channel's input 0..255 becomes. ``float32_scaling``: ``(x / 255 - mean) / std``
    in float32 (the training crop and the ``crop`` evaluation); otherwise the transformers image
    processors' arithmetic, ``x * (1/255)`` in float64 cast to float32, then ``(x - mean) / std``
    in float32 (``shortest_edge`` / ``squash``)."""
    levels = np.arange(256, dtype=np.uint8).reshape(256, 1).repeat(3, axis=1)  # (256, 3)
    if float32_scaling:
        values = levels.astype(np.float32) / 255.0
    else:
        values = (levels.astype(np.float64) * (1 / 255)).astype(np.float32)
    values = (values - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(values.T))  # (3, 256)
