import numpy as np
import pytest
from PIL import Image

from labelkit.images import ImageDecodeError, decode_image


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    decoded = decode_image(tmp_path / "r.jpg")
    assert decoded.shape == (40, 20, 3)
    assert decoded[:20].mean() > 200 and decoded[20:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA"])
def test_modes_become_rgb_uint8(tmp_path, mode):
    image = Image.new("RGB", (9, 7), (200, 100, 50)).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    decoded = decode_image(path)
    assert decoded.shape == (7, 9, 3) and decoded.dtype == np.uint8


def test_16_bit_png_is_scaled(tmp_path):
    Image.fromarray(np.full((5, 6), 65535, dtype=np.uint16)).save(tmp_path / "x.png")
    decoded = decode_image(tmp_path / "x.png")
    assert decoded.shape == (5, 6, 3) and (decoded == 255).all()


def test_undecodable_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    for name in ("empty.jpg", "text.jpg", "cut.jpg", "absent.jpg"):
        with pytest.raises(ImageDecodeError, match=name):
            decode_image(tmp_path / name)


def test_pixel_limit(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 5000"):
        decode_image(tmp_path / "big.png", max_pixels=5000)
    assert decode_image(tmp_path / "big.png", max_pixels=None).shape == (100, 100, 3)
