"""Safe decoding of hostile and unusual image files, and the model's image transforms."""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile

from eclip.catalog.config import DataConfig
from eclip.catalog.images import DEFAULT_MAX_PIXELS, ImageTransform, check_image, load_image, to_rgb
from eclip.catalog.load import load_catalog
from eclip.cli import main
from eclip.errors import ConfigError, ImageError
from eclip.model import DualEncoder
from eclip.train.trainer import train

from recipes import tiny_recipe


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR dimensions of a PNG and fix the chunk's CRC."""
    out = bytearray(data)
    out[16:24] = struct.pack(">II", width, height)
    out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def _mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


# ------------------------------------------------------------------------------------------------
# colour modes and formats


def test_rgb_jpeg_is_decoded(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(_noise(30, 40)).save(path, quality=95)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert check_image(path) is None


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(path, quality=100)  # full magenta ink
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.allclose(np.asarray(image)[8, 8], (255, 0, 255), atol=3)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0 = red (transparent), 1 = blue
    palette.putdata([0, 0, 1, 1, 0, 1, 0, 1])
    path = tmp_path / "logo.png"
    palette.save(path, transparency=0)
    pixels = np.asarray(load_image(path))
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 2].tolist() == [0, 0, 255]


def test_palette_without_transparency_keeps_colours(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1])
    path = tmp_path / "pal.png"
    palette.save(path)
    assert np.asarray(load_image(path)).tolist() == [[[10, 20, 30], [200, 100, 50]]]


@pytest.mark.parametrize("mode,colour,expected", [
    ("RGBA", (255, 0, 0, 0), (255, 255, 255)),       # fully transparent -> white
    ("RGBA", (0, 0, 255, 255), (0, 0, 255)),         # opaque -> unchanged
    ("RGBA", (255, 0, 0, 128), (255, 127, 127)),     # half red over white
    ("LA", (0, 128), (127, 127, 127)),               # half black over white
])
def test_alpha_is_composited_onto_white(tmp_path, mode, colour, expected):
    path = tmp_path / f"{mode}.png"
    Image.new(mode, (3, 3), colour).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.allclose(np.asarray(image)[1, 1], expected, atol=1)


def test_palette_alpha_mode_is_composited():
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 255, 0] * 256)
    pa.putdata([(0, 0), (0, 255)])
    assert np.asarray(to_rgb(pa)).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.array([0, 257, 32768, 65535], dtype=np.uint16), (3, 1))
    path = tmp_path / "depth.png"
    Image.fromarray(ramp).save(path)
    assert _mode(path) == "I;16"
    image = load_image(path)
    assert image.mode == "RGB"
    row = np.asarray(image)[1, :, 0].tolist()
    assert row == [0, 1, 128, 255]
    assert np.asarray(image)[1, 2].tolist() == [128, 128, 128]


def test_32_bit_integer_and_float_grey_are_scaled(tmp_path):
    ints = np.array([[0, 32768, 65535]], dtype=np.int32)
    Image.fromarray(ints).save(tmp_path / "i.tiff")
    assert _mode(tmp_path / "i.tiff") == "I"
    assert np.asarray(load_image(tmp_path / "i.tiff"))[0, :, 0].tolist() == [0, 128, 255]

    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tiff")
    assert _mode(tmp_path / "f.tiff") == "F"
    assert np.asarray(load_image(tmp_path / "f.tiff"))[0, :, 0].tolist() == [0, 128, 255]

    small_ints = np.array([[0, 100, 200]], dtype=np.int32)  # an 8-bit image stored as 32-bit
    Image.fromarray(small_ints).save(tmp_path / "small.tiff")
    assert np.asarray(load_image(tmp_path / "small.tiff"))[0, :, 0].tolist() == [0, 100, 200]


def test_one_bit_image(tmp_path):
    bits = Image.new("1", (2, 1))
    bits.putdata([0, 1])
    bits.save(tmp_path / "bits.png")
    assert np.asarray(load_image(tmp_path / "bits.png")).tolist() == [[[0, 0, 0], [255, 255, 255]]]


@pytest.mark.parametrize("suffix,options", [
    (".gif", {}), (".png", {}), (".webp", {"lossless": True}),
])
def test_animation_gives_first_frame(tmp_path, suffix, options):
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, **options)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (8, 6)
    assert np.asarray(image)[3, 4].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and top[2] < 50      # red went to the top
    assert bottom[2] > 200 and bottom[0] < 50  # blue to the bottom
    assert image.getexif().get(0x0112, 1) == 1  # the tag is dropped: no second rotation later


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_spoil_a_good_photo(tmp_path):
    path = tmp_path / "odd_exif.jpg"
    Image.fromarray(_noise(10, 12)).save(path, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    image = load_image(path)
    assert image.size == (12, 10) and image.mode == "RGB"


# ------------------------------------------------------------------------------------------------
# files that must be refused


def test_truncated_jpeg_is_refused(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_noise(64, 64)).save(good, quality=90)
    data = good.read_bytes()
    for cut in (len(data) - 2, len(data) // 2, 300):
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(data[:cut])
        assert "truncated image" in _error(path)
        assert check_image(path).startswith("truncated image")


def test_truncation_is_found_even_when_pil_is_told_to_accept_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "cut.jpg"
    Image.fromarray(_noise(64, 64)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:1500])
    assert "truncated image" in _error(path)
    whole = tmp_path / "whole.png"
    Image.fromarray(_noise(16, 16)).save(whole)
    assert check_image(whole) is None


def test_truncated_png_is_refused(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_noise(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:5000])
    assert "truncated image" in _error(path)


def test_corrupt_png_data_is_refused(tmp_path):
    path = tmp_path / "corrupt.png"
    Image.fromarray(_noise(64, 64)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4:start])[0]
    data[start + 30] ^= 0xFF  # flip compressed bytes, then make the chunk CRC valid again
    data[start + 4 + length:start + 8 + length] = struct.pack(
        ">I", zlib.crc32(bytes(data[start:start + 4 + length])))
    path.write_bytes(bytes(data))
    assert "corrupt image data" in _error(path)


def test_random_bytes_named_jpg(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(1).bytes(2000))
    assert "not an image file" in _error(path)


def test_unsupported_format_is_refused(tmp_path):
    path = tmp_path / "image.ppm"  # a valid image, but not a format eclip opens
    Image.fromarray(_noise(4, 4)).save(path)
    assert "not an image file" in _error(path)


@pytest.mark.parametrize("make,reason", [
    (lambda p: None, "file not found"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.mkdir(), "not a file"),
])
def test_missing_empty_and_directory(tmp_path, make, reason):
    path = tmp_path / "thing.jpg"
    make(path)
    assert reason in _error(path)
    assert check_image(path).startswith(reason)


def test_zero_width_png_is_refused(tmp_path):
    path = tmp_path / "zero.png"
    Image.fromarray(_noise(8, 8)).save(path)
    path.write_bytes(_patch_png_size(path.read_bytes(), 0, 8))
    _error(path)


def test_decompression_bomb_header_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.fromarray(_noise(8, 8)).save(path)
    path.write_bytes(_patch_png_size(path.read_bytes(), 100_000, 100_000))
    assert "too large" in _error(path)


def test_size_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    # The header claims 8000 x 9000 over 8x8 pixels of data: decoding would fail as truncated; the
    # header check must refuse it first (a PNG is decoded whole: at most 4 x max_pixels).
    path = tmp_path / "large.png"
    Image.fromarray(_noise(8, 8)).save(path)
    path.write_bytes(_patch_png_size(path.read_bytes(), 8000, 9000))
    assert ("too large: 8000x9000 = 72000000 pixels; decoding it takes 72000000, over 4 x "
            "max_pixels=10000000 (data.max_pixels)") in _error(path, max_pixels=10_000_000)
    # Our limit holds even with PIL's own check switched off by other code.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_patch_png_size(path.read_bytes(), 100_000, 100_000))
    assert f"over 4 x max_pixels={DEFAULT_MAX_PIXELS}" in _error(bomb)


def test_max_pixels_argument(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(_noise(100, 100)).save(path)
    assert "too large: 100x100 = 10000 pixels" in _error(path, max_pixels=2000)
    assert check_image(path, max_pixels=10_000) is None
    # above max_pixels but within 4 x: decoded, then reduced by the smallest factor that fits
    assert check_image(path, max_pixels=5000) is None
    assert load_image(path, max_pixels=5000).size == (50, 50)
    assert load_image(path, max_pixels=2500).size == (50, 50)
    # a JPEG is decoded at 1/2, 1/4 or 1/8 scale (Image.draft), then reduced further if need be
    photo = tmp_path / "photo.jpg"
    Image.fromarray(_noise(600, 800)).save(photo, quality=90)
    assert load_image(photo, max_pixels=200_000).size == (400, 300)  # 1/2 scale
    assert load_image(photo, max_pixels=10_000).size == (100, 75)  # 1/8 scale
    assert load_image(photo, max_pixels=1875).size == (34, 25)  # 1/8 scale, then reduced by 3
    assert check_image(photo, max_pixels=1875) is None
    assert "even at 1/8 scale takes 7500, over 4 x max_pixels=1800" in _error(photo, max_pixels=1800)
    assert check_image(photo, max_pixels=1800).startswith("too large")


def test_pil_global_state_is_left_alone(tmp_path):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(_noise(8, 8)).save(good)
    bad.write_bytes(_patch_png_size(good.read_bytes(), 100_000, 100_000))
    load_image(good)
    assert check_image(bad) is not None
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


# ------------------------------------------------------------------------------------------------
# transforms

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.5)


@pytest.mark.parametrize("train", [False, True])
def test_transform_shape_and_dtype(train):
    out = ImageTransform(32, MEAN, STD, train=train)(Image.fromarray(_noise(50, 90)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()


@pytest.mark.parametrize("train", [False, True])
def test_normalisation_on_a_constant_image(train):
    image = Image.new("RGB", (40, 30), (255, 0, 102))
    out = ImageTransform(16, MEAN, STD, train=train)(image, torch.Generator().manual_seed(0))
    expected = [(1.0 - 0.5) / 0.2, (0.0 - 0.4) / 0.25, (0.4 - 0.3) / 0.5]
    for channel, value in enumerate(expected):
        assert torch.allclose(out[channel], torch.full((16, 16), value), atol=1e-5)


def test_eval_is_centre_crop_of_shorter_side():
    pixels = np.zeros((100, 300, 3), dtype=np.uint8)
    pixels[:, :100] = (255, 0, 0)
    pixels[:, 100:200] = (0, 255, 0)
    pixels[:, 200:] = (0, 0, 255)
    transform = ImageTransform(20, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    out = transform(Image.fromarray(pixels))
    assert transform.crop_box((300, 100)) == (100.0, 0.0, 200.0, 100.0)
    # Only the green middle is kept; the bicubic kernel lets the edge columns see their neighbours.
    inner = out[:, :, 2:-2]
    assert torch.allclose(inner[1], torch.ones(20, 16), atol=1e-6)
    assert torch.allclose(inner[[0, 2]], torch.zeros(2, 20, 16), atol=1e-6)
    assert out[1].min() > 0.85


def test_train_crop_is_deterministic_given_the_generator():
    image = Image.fromarray(_noise(80, 120))
    transform = ImageTransform(24, MEAN, STD, train=True)
    first = transform(image, torch.Generator().manual_seed(7))
    again = transform(image, torch.Generator().manual_seed(7))
    other = transform(image, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, ImageTransform(24, MEAN, STD)(image))


def test_train_crop_respects_scale_and_ratio():
    transform = ImageTransform(24, MEAN, STD, train=True, scale=(0.3, 0.5), ratio=(0.8, 1.25))
    generator = torch.Generator().manual_seed(0)
    boxes = [transform.crop_box((200, 150), generator) for _ in range(200)]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 150
        area = (right - left) * (bottom - top) / (200 * 150)
        assert 0.3 - 1e-9 <= area <= 0.5 + 1e-9
        assert 0.8 - 1e-9 <= (right - left) / (bottom - top) <= 1.25 + 1e-9
    assert len({round(b[0], 3) for b in boxes}) > 150  # positions really vary


def test_train_crop_falls_back_for_very_long_images():
    transform = ImageTransform(8, MEAN, STD, train=True, scale=(0.9, 1.0), ratio=(0.8, 1.25))
    left, top, right, bottom = transform.crop_box((1000, 10), torch.Generator().manual_seed(0))
    assert (bottom - top) == 10 and (right - left) == pytest.approx(12.5)
    assert left == pytest.approx((1000 - 12.5) / 2)


def test_transform_accepts_non_rgb_input():
    out = ImageTransform(8, (0.0,) * 3, (1.0,) * 3)(Image.new("LA", (10, 10), (0, 0)))
    assert torch.allclose(out, torch.ones(3, 8, 8))  # transparent -> white


def test_transform_dict_round_trip():
    transform = ImageTransform(64, MEAN, STD, train=True, scale=(0.5, 0.9))
    data = json.loads(json.dumps(transform.to_dict()))
    assert ImageTransform.from_dict(data) == transform
    assert data["mean"] == list(MEAN) and data["train"] is True


@pytest.mark.parametrize("data,message", [
    ({"size": 32, "mean": MEAN, "std": STD, "flip": True}, "unknown setting"),
    ({"size": 32, "mean": MEAN}, "missing setting"),
    ({"size": 0, "mean": MEAN, "std": STD}, "size"),
    ({"size": 32, "mean": MEAN, "std": (1.0, 0.0, 1.0)}, "std"),
    ({"size": 32, "mean": MEAN, "std": STD, "scale": (0.8, 0.5)}, "scale"),
])
def test_transform_rejects_bad_settings(data, message):
    with pytest.raises(ConfigError, match=message):
        ImageTransform.from_dict(data)


def test_a_large_png_is_decoded_at_reduced_size_and_the_limit_is_a_setting(tmp_path, capsys,
                                                                           tiny_model_dir):
    images = tmp_path / "imgs"
    images.mkdir()
    big = Image.new("1", (9500, 9500), 1)  # 90 megapixels, above PIL's warning threshold
    ImageDraw.Draw(big).rectangle((1000, 1000, 6000, 8000), fill=0)
    big.save(images / "poster.png")  # a 1-bit PNG: tiny on disk, 90 MB decoded
    del big
    Image.new("RGB", (32, 32), (200, 20, 20)).save(images / "small.png")
    path = tmp_path / "shop.jsonl"
    path.write_text('{"product_id": "big", "title": "poster", "images": "imgs/poster.png"}\n'
                    '{"product_id": "small", "title": "red", "images": "imgs/small.png"}\n')

    with warnings.catch_warnings(record=True) as caught:  # PIL's own warning is silenced
        kept = load_catalog(DataConfig(catalog=str(path)), progress=False, log=lambda _: None)
        lowered = load_catalog(DataConfig(catalog=str(path), max_pixels=20_000_000),
                               progress=False, log=lambda _: None)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert [x.product_id for x in kept.listings] == ["big", "small"]  # 90M: decoded, reduced
    # 90M > 4 x 20M: too large to decode; the listing has no other photo
    assert [(i.product_id, i.line, i.action) for i in lowered.issues] == [
        ("big", 1, "dropped_image"), ("big", 1, "skipped_row")]
    assert "1 too large" in lowered.summary()

    # the setting from the command line: data.max_pixels=... (a recipe's data section)
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--model", str(tiny_model_dir), "--catalog", str(path), "--out",
                 str(out), "--threads", "1", "data.max_pixels=20000000"]) == 0
    bad = json.loads((tmp_path / "bad_rows.json").read_text())
    assert [(i["product_id"], i["field"]) for i in bad["issues"] if i["action"] == "dropped_image"] \
        == [("big", "images")]
    assert "over 4 x max_pixels=20000000 (data.max_pixels)" in bad["issues"][0]["reason"]
    assert main(["embed", "--model", str(tiny_model_dir), "--catalog", str(path), "--out",
                 str(out), "--threads", "1", "data.max_pixels=25000000"]) == 0
    assert "wrote 2 embeddings" in capsys.readouterr().out
    assert main(["embed", "--model", str(tiny_model_dir), "--catalog", str(path), "--out",
                 str(out), "data.max_pixels=0"]) == 2
    assert "data.max_pixels must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("keep", [2, 3, 10, 200, 0.5])
def test_a_truncated_jpeg_says_truncated(tmp_path, keep):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    reason = check_image(path)
    assert reason is not None and reason.startswith("truncated image"), reason
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


def test_a_text_file_is_still_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("just some words, not a photo at all")
    assert check_image(path).startswith("not an image file")


def test_data_max_pixels_reaches_training_and_thumbnails(tmp_path, tiny_model_dir, train_listings,
                                                          monkeypatch):
    """data.max_pixels holds where photos are decoded later: training's images, index thumbnails."""
    from eclip.catalog.compose import TextComposer
    from eclip.search.thumbnails import ThumbnailStore
    from eclip.train.data import ListingDataset

    big = tmp_path / "big.png"
    Image.new("RGB", (100, 100), (200, 30, 30)).save(big)  # 10,000 pixels, decoded whole (PNG)
    model = DualEncoder.from_pretrained(tiny_model_dir)
    transform = model.config.image_transform(train=False)
    one = [replace(train_listings[0], images=[str(big)])]
    assert ListingDataset(one, TextComposer(), transform)[0]["pixel_values"].shape[0] == 3
    with pytest.raises(ImageError, match="data.max_pixels"):
        ListingDataset(one, TextComposer(), transform, max_pixels=1000)[0]  # over 4 x 1000
    reduced = ListingDataset(one, TextComposer(), transform, max_pixels=5000)[0]  # halved first
    assert reduced["pixel_values"].shape == ListingDataset(one, TextComposer(), transform)[0][
        "pixel_values"].shape
    assert ThumbnailStore(tmp_path / "thumbs", size=16).put(big)
    with pytest.raises(ImageError, match="data.max_pixels"):
        ThumbnailStore(tmp_path / "thumbs", size=16, max_pixels=1000).put(big)
    # the trainer passes the recipe's data.max_pixels to the photos it decodes
    import eclip.train.data as train_data

    seen = []
    real = train_data.load_image

    def spy(path, **kwargs):
        seen.append(kwargs.get("max_pixels"))
        return real(path, **kwargs)

    monkeypatch.setattr(train_data, "load_image", spy)
    train(tiny_recipe(tmp_path / "run", "train.batch_size=16", "train.lr=0.01", "train.device=cpu",
                      "data.max_pixels=5000", "train.max_steps=1"), model, train_listings,
          log=lambda s: None)
    assert seen and set(seen) == {5000}
