"""Decode chest radiographs (DICOM, PNG, JPEG) into float32 pixels in [0, 1], lungs dark.

`decode_image(data)` sniffs the content (never the file name), checks the declared size before
any pixel is decoded, and returns a `DecodedImage`: `pixels` (H, W) float32 in MONOCHROME2 sense
(0 black, 1 white; MONOCHROME1 is inverted) and `meta`, a dict of SAFE fields only (format,
modality, photometric, bits_stored, rows, columns, transfer_syntax, view_position, frames).
Patient identifiers, dates, institution and physician names are never read into `meta`, error
messages or log lines.

Intensity pipeline for DICOM: stored values -> Modality LUT (or Rescale Slope/Intercept) ->
VOI LUT (preferred when present) or Window Center/Width (first window; LINEAR, LINEAR_EXACT,
SIGMOID) -> [0, 1]; with neither, min-max over the image. PNG/JPEG: 8-bit values / 255;
16-bit and 32-bit gray are min-max normalised (such files usually carry 10-14 significant bits).
RGB is converted to luma (ITU-R BT.601); grayscale saved as RGB is exactly its gray, a colour
image (coloured marks on a figure) is converted too and logged with its coloured fraction. An
alpha channel is accepted when fully opaque, or when its transparency only marks borders around
one opaque rectangle (a reposted figure): those pixels are composited onto black and a log line
says so. Transparency over the image itself is refused (`UnsupportedImageError`, with the
fraction), since what lies under it is undefined. JPEG artefacts and burnt-in text are not
detected: such images are decoded as they are.
EXIF orientation is applied to PNG/JPEG.

`resize_square` stretches to a square (no letterbox, SPEC section 2), so masks made at that size
align with the whole image.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ils.errors import UserError

if TYPE_CHECKING:
    from ils.store import Store

log = logging.getLogger(__name__)


class _WithholdQuotedValues(logging.Filter):
    """pydicom logs element values in quotes (e.g. "Invalid value for VR DA: '...'"): withhold them."""

    _QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._QUOTED.sub("'<withheld>'", record.getMessage())
        record.args = None
        return True


def _install_pydicom_log_filter() -> None:
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, _WithholdQuotedValues) for f in logger.filters):
        logger.addFilter(_WithholdQuotedValues())


_install_pydicom_log_filter()

DEFAULT_MAX_PIXELS = 50_000_000

#: The only metadata keys `decode_image` ever returns.
SAFE_META_KEYS: tuple[str, ...] = (
    "format", "modality", "photometric", "bits_stored", "rows", "columns",
    "transfer_syntax", "view_position", "frames",
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Words in the names of DICOM SOP classes that never hold an image to decode.
_NON_IMAGE_SOP_WORDS = ("SR Storage", "Encapsulated", "Presentation State", "Key Object", "Waveform",
                        "Structure Set", "RT Plan", "Raw Data", "Spectroscopy", "Document")


class ImageError(UserError):
    """An image cannot be decoded; the message says why (never with patient data)."""


class EmptyImageError(ImageError):
    """The file has no bytes."""


class TruncatedImageError(ImageError):
    """The file ends before its declared content does."""


class NoPixelDataError(ImageError):
    """A DICOM image dataset without pixel data."""


class UnsupportedTransferSyntaxError(ImageError):
    """A DICOM transfer syntax that no installed pixel plugin decodes."""


class MultiFrameError(ImageError):
    """More than one frame: a chest radiograph is one frame."""


class ImageTooLargeError(ImageError):
    """The declared size exceeds the configured limit."""


class UnsupportedImageError(ImageError):
    """Not an image this module reads (unknown format, non-image DICOM, transparency, ...)."""


@dataclass
class DecodedImage:
    """Pixels (H, W) float32 in [0, 1], lungs dark, and safe metadata."""

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _label(name: str) -> str:
    return f"{name}: " if name else ""


def _safe_meta(**kw: Any) -> dict[str, Any]:
    return {k: kw.get(k) for k in SAFE_META_KEYS}


def _check_pixels(rows: int, cols: int, max_pixels: int, name: str) -> None:
    if rows <= 0 or cols <= 0:
        raise UnsupportedImageError(f"{_label(name)}image declares {rows} x {cols} pixels")
    if rows * cols > max_pixels:
        raise ImageTooLargeError(
            f"{_label(name)}image declares {rows} x {cols} = {rows * cols} pixels, "
            f"more than the limit of {max_pixels}"
        )


def sniff(data: bytes) -> str | None:
    """'dicom', 'png', 'jpeg' or None, from the content only."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    # A DICOM dataset without the 128-byte preamble: starts with a little-endian group 0002
    # (file meta) or 0008 (identifying) element, explicit VR letters or an implicit 4-byte length.
    if len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3:4] == b"\x00":
        vr = data[4:6]
        if (vr.isalpha() and vr.isupper()) or data[6:8] == b"\x00\x00":
            return "dicom"
    return None


def decode_image(data: bytes, *, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode DICOM/PNG/JPEG bytes; `name` only labels error messages."""
    if data is None or len(data) == 0:
        raise EmptyImageError(f"{_label(name)}file is empty (0 bytes)")
    kind = sniff(data)
    if kind is None:
        raise UnsupportedImageError(f"{_label(name)}not a DICOM, PNG or JPEG file")
    # Library warnings (pydicom's quote element values) are counted, never shown or logged as is.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if kind == "dicom":
                return _decode_dicom(data, name, max_pixels)
            return _decode_pil(data, kind, name, max_pixels)
        except ImageError:
            raise
        except Exception as exc:  # malformed input must never escape untyped; its message may quote values
            log.debug("%sunexpected %s while decoding %s", _label(name), type(exc).__name__, kind)
            raise UnsupportedImageError(
                f"{_label(name)}cannot decode this {kind.upper()} file ({type(exc).__name__})"
            ) from None
        finally:
            if caught:
                log.debug("%s%d library warning(s) while decoding (withheld)", _label(name), len(caught))


# -- DICOM -------------------------------------------------------------------------------------
def _sop_name(ds) -> str:
    from pydicom.uid import UID

    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    return UID(str(uid)).name if uid else ""


def _read_dataset(data: bytes, name: str):
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError) as exc:
        raise TruncatedImageError(f"{_label(name)}DICOM file is truncated or corrupt ({type(exc).__name__})") from None
    except Exception as exc:  # the parser's message may quote element values: leave it out
        raise UnsupportedImageError(f"{_label(name)}cannot parse DICOM file ({type(exc).__name__})") from None
    if len(ds) == 0:
        raise TruncatedImageError(f"{_label(name)}DICOM file holds no data elements (truncated?)")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:  # no file meta: use the encoding found
        implicit, little = getattr(ds, "original_encoding", (True, True))
        ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = ts
    return ds


def _int(ds, keyword: str, default: int | None = None) -> int | None:
    try:
        value = ds.get(keyword, default)
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return default


def _str(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    return str(value).strip() or None


def _first(value) -> float:
    """The first value of a DS element that may hold one or several values."""
    if isinstance(value, (str, bytes, int, float)):
        return float(value)
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _lut_values(item) -> np.ndarray:
    """The entries of a VOI LUT item (LUTData as a list, or raw OW bytes)."""
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        return np.frombuffer(bytes(data), dtype="<u2" if bits > 8 else "u1").astype(np.float64)
    values = data if hasattr(data, "__len__") else [data]
    return np.asarray(values, dtype=np.float64).ravel()


def _window(x: np.ndarray, center: float, width: float, func: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing onto [0, 1]."""
    if func == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-6)))
    if func == "LINEAR_EXACT":
        w = max(width, 1e-6)
        return np.clip((x - center) / w + 0.5, 0.0, 1.0)
    w = max(width - 1.0, 1e-6)  # LINEAR
    return np.clip((x - (center - 0.5)) / w + 0.5, 0.0, 1.0)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise UnsupportedImageError("image holds non-finite values")
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return (x - lo) / (hi - lo)


def _voi(x: np.ndarray, ds) -> np.ndarray:
    """VOI LUT or window onto [0, 1]; min-max when the file has neither."""
    seq = ds.get("VOILUTSequence")
    if seq and "LUTData" in seq[0] and "LUTDescriptor" in seq[0]:  # PS3.3 C.11.2.1.1
        item = seq[0]
        lut = _lut_values(item)
        n, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
        lut = lut[:n]
        if lut.size:
            y = lut[np.clip(np.rint(x) - first, 0, lut.size - 1).astype(np.int64)]
            lo, hi = float(lut.min()), float(lut.max())
            return (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)
        log.debug("ignoring an empty VOI LUT")
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            center = width = float("nan")
        if math.isfinite(center) and math.isfinite(width) and width > 0:
            func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            return _window(x, center, width, func)
        log.debug("ignoring an invalid window; using the image's range")
    return _minmax(x)


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> DecodedImage:
    from pydicom.pixels import apply_modality_lut, get_decoder

    ds = _read_dataset(data, name)
    sop = _sop_name(ds)
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        if any(word in sop for word in _NON_IMAGE_SOP_WORDS) or _str(ds, "Modality") in ("SR", "KO", "PR", "DOC"):
            raise UnsupportedImageError(f"{_label(name)}DICOM object is not an image ({sop or 'non-image'})")
        if "Rows" not in ds and ("Image" in sop or not sop):
            raise TruncatedImageError(f"{_label(name)}DICOM file ends before its image attributes (truncated?)")
        raise NoPixelDataError(f"{_label(name)}DICOM file has no pixel data")
    rows, cols = _int(ds, "Rows", 0) or 0, _int(ds, "Columns", 0) or 0
    _check_pixels(rows, cols, max_pixels, name)
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if frames > 1:
        raise MultiFrameError(f"{_label(name)}DICOM image has {frames} frames; one frame is expected")
    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except (NotImplementedError, ValueError):
        raise UnsupportedTransferSyntaxError(
            f"{_label(name)}DICOM transfer syntax {ts} ({ts.name}) cannot be decoded"
        ) from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"{_label(name)}no installed pixel plugin decodes transfer syntax {ts} ({ts.name})"
        )
    spp = _int(ds, "SamplesPerPixel", 1) or 1
    bits_alloc = _int(ds, "BitsAllocated", 16) or 16
    photometric = (_str(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    if not ts.is_encapsulated and "PixelData" in ds:
        expected = rows * cols * spp * bits_alloc // 8 if bits_alloc >= 8 else math.ceil(rows * cols * spp / 8)
        if photometric == "YBR_FULL_422":
            expected = expected * 2 // 3
        if len(ds.PixelData) < expected:
            raise TruncatedImageError(
                f"{_label(name)}DICOM pixel data is truncated ({len(ds.PixelData)} of {expected} bytes)"
            )
    try:
        arr = ds.pixel_array
    except (EOFError, ValueError) as exc:
        raise TruncatedImageError(
            f"{_label(name)}DICOM pixel data cannot be decoded (truncated or corrupt): {type(exc).__name__}"
        ) from None
    except (NotImplementedError, RuntimeError, AttributeError, TypeError, KeyError) as exc:
        raise UnsupportedImageError(f"{_label(name)}DICOM pixel data cannot be decoded: {type(exc).__name__}") from None
    except BaseException as exc:  # a Rust decoder's panic (pyo3 PanicException) is a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise TruncatedImageError(
            f"{_label(name)}DICOM pixel data is corrupt (the decoder failed: {type(exc).__name__})"
        ) from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and spp > 1:
        rgb = arr[..., :3].astype(np.float64)
        x = _luma(rgb) / float(2 ** (_int(ds, "BitsStored", 8) or 8) - 1)
        pixels = np.clip(x, 0.0, 1.0)
        photometric = "RGB" if photometric.startswith("YBR") else photometric
    elif arr.ndim == 2:
        x = apply_modality_lut(arr, ds) if "ModalityLUTSequence" in ds or "RescaleSlope" in ds else arr
        pixels = _voi(np.asarray(x, dtype=np.float64), ds)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
    else:
        raise UnsupportedImageError(f"{_label(name)}DICOM pixel array of shape {arr.shape} is not one 2-D image")
    meta = _safe_meta(
        format="dicom", modality=_str(ds, "Modality"), photometric=photometric,
        bits_stored=_int(ds, "BitsStored"), rows=rows, columns=cols, transfer_syntax=str(ts),
        view_position=_str(ds, "ViewPosition"), frames=frames,
    )
    return DecodedImage(np.ascontiguousarray(pixels, dtype=np.float32), meta)


# -- PNG / JPEG --------------------------------------------------------------------------------
def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _decode_pil(data: bytes, kind: str, name: str, max_pixels: int) -> DecodedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = _label(name)
    try:
        im = Image.open(io.BytesIO(data), formats=["PNG"] if kind == "png" else ["JPEG"])
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{label}{kind.upper()} declares more pixels than the limit of {max_pixels}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise TruncatedImageError(f"{label}{kind.upper()} header is truncated or corrupt ({type(exc).__name__})") from None
    with im:
        cols, rows = im.size  # the header only; no pixel decoded yet
        _check_pixels(rows, cols, max_pixels, name)
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:
            raise MultiFrameError(f"{label}{kind.upper()} has {frames} frames; one frame is expected")
        try:
            im.load()
            im = ImageOps.exif_transpose(im) or im
        except Image.DecompressionBombError:
            raise ImageTooLargeError(f"{label}{kind.upper()} is larger than allowed") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise TruncatedImageError(
                f"{label}{kind.upper()} pixel data is truncated or corrupt ({type(exc).__name__})"
            ) from None
        pixels, photometric, bits = _pil_to_gray(im, label, kind)
    meta = _safe_meta(
        format=kind, modality=None, photometric=photometric, bits_stored=bits,
        rows=int(pixels.shape[0]), columns=int(pixels.shape[1]), transfer_syntax=None,
        view_position=None, frames=1,
    )
    return DecodedImage(np.ascontiguousarray(pixels, dtype=np.float32), meta)


def _pil_to_gray(im, label: str, kind: str) -> tuple[np.ndarray, str, int]:
    """(pixels in [0, 1], photometric, bits) for a loaded Pillow image."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("LA" if mode == "L" else "RGBA")
        mode = im.mode
    alpha = None
    if mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            _check_alpha(alpha, label, kind)
        else:
            alpha = None
        im = im.convert("L" if mode.startswith("L") else "RGB")
        mode = im.mode
    gray, photometric, bits = _plain_gray(im, mode, label, kind)
    if alpha is not None:  # transparent borders only: composite onto black
        gray = gray * (alpha.astype(np.float64) / 255.0)
    return gray, photometric, bits


def _plain_gray(im, mode: str, label: str, kind: str) -> tuple[np.ndarray, str, int]:
    """(pixels in [0, 1], photometric, bits) of an image without alpha."""
    if mode == "1":
        return np.asarray(im, dtype=np.float64), "MONOCHROME2", 1
    if mode == "L":
        return np.asarray(im, dtype=np.float64) / 255.0, "MONOCHROME2", 8
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        bits = 16 if mode.startswith("I;16") else 32
        if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            bits = 16  # Pillow opens 16-bit gray PNGs as "I" in some versions
        return _minmax(arr), "MONOCHROME2", bits
    if mode not in ("RGB",):
        try:
            im = im.convert("RGB")
        except (ValueError, OSError):
            raise UnsupportedImageError(f"{label}{kind.upper()} colour mode {mode} is not supported") from None
    rgb = np.asarray(im, dtype=np.float64)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    coloured = float((chroma > COLOUR_CHROMA).mean())
    if coloured > 0:
        log.warning("%s%s: colour image converted to gray (luma); %.2f %% of its pixels are coloured "
                    "(marks or annotations stay in the image)", label, kind.upper(), 100 * coloured)
    else:
        log.debug("%s%s: grayscale saved as RGB, converted to gray", label, kind.upper())
    return np.clip(_luma(rgb) / 255.0, 0.0, 1.0), "RGB", 8


#: A pixel whose channels differ by more than this (of 255) counts as coloured.
COLOUR_CHROMA = 24
#: Transparent pixels allowed inside the opaque area (antialiased edges), fraction of it.
ALPHA_INSIDE_TOLERANCE = 0.001
#: The opaque area must cover at least this fraction of the image.
ALPHA_MIN_OPAQUE = 0.1


def _check_alpha(alpha: np.ndarray, label: str, kind: str) -> None:
    """Accept transparency only as borders around one opaque rectangle; refuse it over the image.

    The opaque area is the bounding box of the fully opaque pixels; inside it (less a 2-pixel
    rim for antialiased edges) at most ALPHA_INSIDE_TOLERANCE of the pixels may be transparent,
    and it must cover at least ALPHA_MIN_OPAQUE of the image. What lies under transparency over
    the anatomy is undefined, so such an image is refused with the measured fraction."""
    opaque = alpha == 255
    what = f"{label}{kind.upper()}"
    if not opaque.any():
        raise UnsupportedImageError(f"{what} is fully transparent (alpha channel); nothing to read")
    rows, cols = np.flatnonzero(opaque.any(axis=1)), np.flatnonzero(opaque.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    area = (r1 - r0) * (c1 - c0) / alpha.size
    if area < ALPHA_MIN_OPAQUE:
        raise UnsupportedImageError(
            f"{what} is mostly transparent: the opaque area is {100 * area:.1f} % of the image (alpha channel)"
        )
    inner = alpha[r0 + 2 : max(r0 + 2, r1 - 2), c0 + 2 : max(c0 + 2, c1 - 2)]
    inside = float((inner < 255).mean()) if inner.size else 0.0
    if inside > ALPHA_INSIDE_TOLERANCE:
        raise UnsupportedImageError(
            f"{what} has transparent pixels over the image ({100 * inside:.1f} % of its opaque area; alpha channel): "
            "what lies under them is undefined; only transparent borders are converted. Save it without transparency"
        )
    log.info("%s: transparent borders (%.1f %% of the pixels, outside the opaque %d x %d area) composited onto black",
             what, 100 * float((alpha < 255).mean()), c1 - c0, r1 - r0)


# -- resizing and reading ----------------------------------------------------------------------
def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Stretch (H, W) to (size, size) float32, antialiased bilinear (Pillow, 'F' mode)."""
    from PIL import Image

    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {arr.shape}")
    if arr.shape == (size, size):
        return arr.copy()
    out = Image.fromarray(arr).resize((int(size), int(size)), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 (rounded), for PNG output."""
    return np.clip(np.rint(np.asarray(pixels, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def read_image(store: "Store", uri: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None) -> DecodedImage:
    """Read `uri` (relative to the store, or a full URI on its file system) and decode it."""
    if max_bytes is not None:
        size = store.size(uri)
        if size > max_bytes:
            raise ImageTooLargeError(f"{posixpath.basename(uri)}: file has {size} bytes, more than the limit of {max_bytes}")
    data = store.read_bytes(uri, max_bytes=max_bytes)
    return decode_image(data, name=posixpath.basename(uri.rstrip("/")), max_pixels=max_pixels)
