"""Images as users send them (issue 13, item 5): what is converted, what is refused, and why."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ils.imageio import UnsupportedImageError, decode_image


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _gradient(h: int = 64, w: int = 80) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) * 255 // (h + w)).astype(np.uint8)


def test_transparent_border_png_is_composited_onto_black_and_logged(caplog):
    gray = _gradient()
    rgba = np.dstack([gray, gray, gray, np.zeros_like(gray)])
    rgba[8:56, 10:70, 3] = 255  # the figure; the rest is a transparent border
    rgba[7, 10:70, 3] = 128  # an antialiased edge row
    with caplog.at_level(logging.INFO, logger="ils.imageio"):
        img = decode_image(_png(rgba, "RGBA"), name="figure.png")
    assert img.pixels.shape == gray.shape  # the image keeps its size
    np.testing.assert_allclose(img.pixels[8:56, 10:70], gray[8:56, 10:70] / 255.0, atol=1e-5)
    assert img.pixels[:6].max() == 0 and img.pixels[:, :9].max() == 0  # border -> black
    np.testing.assert_allclose(img.pixels[7, 10:70], gray[7, 10:70] / 255.0 * 128 / 255, atol=1e-5)
    assert any("transparent borders" in r.getMessage() and "composited onto black" in r.getMessage() for r in caplog.records)
    # grayscale + alpha (LA) is handled the same way
    la = np.dstack([gray, rgba[..., 3]])
    assert decode_image(_png(la, "LA")).pixels[:6].max() == 0


def test_transparency_over_the_image_is_refused_with_the_reason():
    gray = _gradient()
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    rgba[20:40, 30:50, 3] = 0  # a transparent hole over the anatomy
    with pytest.raises(UnsupportedImageError, match=r"transparent pixels over the image \(\d+\.\d % of its opaque area"):
        decode_image(_png(rgba, "RGBA"), name="hole.png")
    rgba[..., 3] = 0
    rgba[30:34, 30:34, 3] = 255  # a tiny opaque island
    with pytest.raises(UnsupportedImageError, match="mostly transparent"):
        decode_image(_png(rgba, "RGBA"))
    rgba[..., 3] = 0
    with pytest.raises(UnsupportedImageError, match="fully transparent"):
        decode_image(_png(rgba, "RGBA"))


def test_grayscale_saved_as_rgb_is_its_gray_and_colour_marks_are_logged(caplog):
    gray = _gradient()
    rgb = np.dstack([gray, gray, gray])
    with caplog.at_level(logging.WARNING, logger="ils.imageio"):
        a = decode_image(_png(rgb, "RGB")).pixels
    np.testing.assert_allclose(a, gray / 255.0, atol=1e-3)
    assert not caplog.records
    rgb[5:10, 5:40] = (255, 0, 0)  # a red arrow on a figure
    with caplog.at_level(logging.WARNING, logger="ils.imageio"):
        b = decode_image(_png(rgb, "RGB"), name="marked.png").pixels
    assert b.shape == gray.shape
    assert any("colour image converted to gray" in r.getMessage() for r in caplog.records)


def test_jpeg_with_burnt_in_text_is_decoded_as_it_is():
    gray = Image.fromarray(_gradient(128, 128), mode="L")
    ImageDraw.Draw(gray).text((5, 5), "R  PORTABLE  AP", fill=255)
    buf = io.BytesIO()
    gray.save(buf, format="JPEG", quality=70)
    img = decode_image(buf.getvalue())
    assert img.meta["format"] == "jpeg" and img.pixels.shape == (128, 128)
    assert img.pixels[5:15, 5:60].max() > 0.9  # the text is still there: nothing is cropped or masked
