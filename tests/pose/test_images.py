"""Reference images are read faithfully: transparency on the documented background, 16-bit
greys scaled, EXIF orientation applied, every decoder error naming the file, and a warning for
a reference far below the output size."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from pose.errors import PoseInputError, PoseInputWarning
from pose.extract import detect_reference, prepare_reference
from pose.images import BACKGROUND_RGB, load_image


def _save(tmp_path, name, image: Image.Image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_transparency_is_composited_on_the_background(tmp_path):
    rgba = np.zeros((8, 12, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 0)  # fully transparent red: the red must not show
    rgba[:, 4:8] = (0, 0, 0, 128)  # half-transparent black
    rgba[:, 8:] = (10, 20, 30, 255)  # opaque
    out = load_image(_save(tmp_path, "rgba.png", Image.fromarray(rgba)))
    assert BACKGROUND_RGB == (255, 255, 255)
    assert (out[:, :4] == BACKGROUND_RGB).all()
    assert (out[:, 4:8] == 127).all()  # 255 * (1 - 128/255)
    assert (out[:, 8:] == (10, 20, 30)).all()


@pytest.mark.parametrize("mode", ["LA", "P", "L"])
def test_grey_alpha_palette_and_colour_key_transparency_too(tmp_path, mode):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (0, 0, 0, 0)
    rgba[:, 4:] = (40, 40, 40, 255)
    image = Image.fromarray(rgba)
    options = {}
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("RGB").quantize(4)  # a palette image whose black entry is transparent
        options["transparency"] = int(np.asarray(image)[0, 0])
    else:
        image = image.convert("L")  # grey with black as the transparent colour key
        options["transparency"] = 0
    out = load_image(_save(tmp_path, f"{mode}.png", image, **options))
    assert (out[:, :4] == BACKGROUND_RGB).all() and (out[:, 4:] == 40).all()


def test_16_bit_grey_is_scaled_not_clipped_and_still_shows_the_person(tmp_path, astronaut, mp_image_detector):
    grey = np.asarray(Image.fromarray(astronaut).convert("L"))
    path = _save(tmp_path, "grey16.png", Image.fromarray(grey.astype(np.uint16) * 257))
    assert Image.open(path).mode == "I;16"
    out = load_image(path)
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    reference = prepare_reference(path, height=1024, width=576)
    assert not detect_reference(reference, mp_image_detector, source=str(path)).missing


def test_32_bit_integer_and_float_greys(tmp_path):
    ramp = np.arange(64, dtype=np.int32).reshape(8, 8)
    eight = load_image(_save(tmp_path, "i8.tif", Image.fromarray(ramp * 4)))  # values up to 252: 8-bit
    assert eight[7, 7, 0] == 252
    sixteen = load_image(_save(tmp_path, "i16.tif", Image.fromarray(ramp * 1000)))  # up to 63000: 16-bit
    assert sixteen[7, 7, 0] == round(63000 / 257)
    with pytest.raises(PoseInputError, match=r"i32\.tif: I image with values in \[0, 6300000\]"):
        load_image(_save(tmp_path, "i32.tif", Image.fromarray(ramp * 100000)))
    with pytest.raises(PoseInputError, match=r"f\.tif: floating-point images are not supported"):
        load_image(_save(tmp_path, "f.tif", Image.fromarray(ramp.astype(np.float32))))


def test_cmyk_and_exif_orientation(tmp_path):
    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # red
    assert (load_image(_save(tmp_path, "cmyk.jpg", cmyk, quality=100))[..., 0] > 240).all()
    tall = np.zeros((4, 6, 3), np.uint8)
    tall[0, 0] = 255  # a white top-left pixel
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    out = load_image(_save(tmp_path, "rotated.png", Image.fromarray(tall), exif=exif))
    assert out.shape == (6, 4, 3) and out[0, -1].min() == 255


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _corrupt_pngs(good: bytes) -> dict[str, bytes]:
    bad_crc = bytearray(good)
    bad_crc[len(good) // 2] ^= 0xFF  # inside the pixel data: its chunk's checksum fails
    huge = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return {
        "bad-checksum.png": bytes(bad_crc),  # verify() raises SyntaxError on it
        "truncated.png": good[: len(good) // 2],
        "bomb.png": good[:8] + _chunk(b"IHDR", huge) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""),
        "no-pixels.png": good[:8] + _chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 2, 0, 0, 0)) + _chunk(b"IEND", b""),
    }


@pytest.mark.parametrize("name", ["bad-checksum.png", "truncated.png", "bomb.png", "no-pixels.png"])
def test_corrupt_files_raise_an_error_naming_the_file(tmp_path, astronaut, name):
    good = _save(tmp_path, "good.png", Image.fromarray(astronaut)).read_bytes()
    path = tmp_path / name
    path.write_bytes(_corrupt_pngs(good)[name])
    with pytest.raises(PoseInputError, match=rf"cannot read image .*{name}"):
        prepare_reference(path, height=1024, width=576)


def test_a_reference_far_below_the_output_size_warns(tmp_path):
    tiny = _save(tmp_path, "tiny.png", Image.new("RGB", (16, 16), (90, 90, 90)))
    with pytest.warns(PoseInputWarning, match=r"tiny\.png: 16x16 px is far below the 576x1024 output \(scaled up 64\.0x"):
        assert prepare_reference(tiny, height=1024, width=576).shape == (1024, 576, 3)
    narrow = _save(tmp_path, "narrow.png", Image.new("RGB", (280, 600)))  # 280 < 576 / 2
    with pytest.warns(PoseInputWarning, match=r"narrow\.png: 280x600 px .* use at least 288x512 px"):
        prepare_reference(narrow, height=1024, width=576)
    enough = _save(tmp_path, "enough.png", Image.new("RGB", (288, 512)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoseInputWarning)
        prepare_reference(enough, height=1024, width=576)
