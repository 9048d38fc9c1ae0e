"""Request and response encodings of the service: content sniffing, mask PNG/RLE, DICOM-SEG.

Mask RLE (documented choice): COCO-style *uncompressed* RLE,
``{"size": [height, width], "counts": [n0, n1, n2, ...]}``. The mask is flattened in
column-major (Fortran) order; counts alternate runs of 0 and 1 and always start with a run of 0
(which may be 0 long). This is what ``pycocotools.mask.frPyObjects`` accepts.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Optional

import numpy as np
from PIL import Image

from ils.errors import UserError

log = logging.getLogger(__name__)

#: The media types the service accepts, by sniffed content (never by the declared type).
KIND_DICOM, KIND_PNG, KIND_JPEG = "dicom", "png", "jpeg"


class UnsupportedMediaError(UserError):
    """The upload is neither DICOM, PNG nor JPEG (HTTP 415)."""


def sniff(data: bytes) -> str:
    """'dicom', 'png' or 'jpeg' from the content (ils.imageio.sniff); UnsupportedMediaError otherwise."""
    from ils.imageio import sniff as _sniff

    kind = _sniff(data)
    if kind is None:
        raise UnsupportedMediaError("unsupported image type: expected DICOM, PNG or JPEG content")
    return kind


def rle_encode(mask: np.ndarray) -> dict:
    """COCO-style uncompressed RLE of a 2-D boolean mask (column-major, starts with zeros)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    flat = m.flatten(order="F").astype(np.int8)
    if flat.size == 0:
        return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": []}
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(r) for r in runs]}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of rle_encode."""
    h, w = (int(v) for v in rle["size"])
    counts = [int(c) for c in rle["counts"]]
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


def mask_png(mask: np.ndarray) -> bytes:
    """A binary mask as an 8-bit grayscale PNG (0 / 255)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def mask_png_b64(mask: np.ndarray) -> str:
    return base64.b64encode(mask_png(mask)).decode("ascii")


def b64decode_strict(text: str) -> bytes:
    """Base64 (standard or data: URL) to bytes; ValueError when malformed."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    return base64.b64decode(text, validate=True)


def dicom_seg(source: bytes, mask: np.ndarray, *, label: str, model_id: str) -> bytes:
    """A DICOM Segmentation (binary, one segment) referencing the uploaded DICOM image.

    The mask must have the source image's (Rows, Columns). Patient/study attributes are copied
    from the source by highdicom (they go back to the caller only, never into logs).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    ds = pydicom.dcmread(io.BytesIO(source), stop_before_pixels=True, force=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    m = np.asarray(mask, dtype=bool)
    if m.shape != (rows, cols):
        raise ValueError(f"mask shape {m.shape} does not match the DICOM image ({rows}, {cols})")
    algo = hd.AlgorithmIdentificationSequence(
        name="ROSALIA", version=str(model_id)[:64] or "unknown", family=codes.cid7162.ArtificialIntelligence
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label[:64] or "lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
    )
    seg = hd.seg.Segmentation(
        source_images=[ds],
        pixel_array=m[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ils",
        manufacturer_model_name="ROSALIA",
        software_versions=str(model_id)[:64] or "unknown",
        device_serial_number="0",
        omit_empty_frames=False,
    )
    _conform_projection_seg(seg, ds)
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def _zero_spacing(value) -> bool:
    try:
        return not value or any(float(v) <= 0 for v in value)
    except (TypeError, ValueError):
        return True


def _conform_projection_seg(seg, source) -> None:
    """What dciodvfy asks of a SEG of a projection radiograph (no Frame of Reference).

    General Image: Patient Orientation (Type 2C, required without Image Orientation (Patient))
    is copied from the source, empty when the source has none. Pixel Spacing is kept only when
    the source has a positive one: a zero spacing is removed, with its Pixel Measures item when
    nothing else is left in it.
    """
    if "ImageOrientationPatient" not in source:
        seg.PatientOrientation = list(source.get("PatientOrientation") or [])
    source_has_spacing = not _zero_spacing(source.get("PixelSpacing"))
    for groups in (seg.get("SharedFunctionalGroupsSequence") or []), *(
            [item] for item in (seg.get("PerFrameFunctionalGroupsSequence") or [])):
        for group in groups:
            measures = group.get("PixelMeasuresSequence")
            if not measures:
                continue
            for m in measures:
                if "PixelSpacing" in m and (not source_has_spacing or _zero_spacing(m.PixelSpacing)):
                    del m.PixelSpacing
            if all(len(m) == 0 for m in measures):
                del group.PixelMeasuresSequence
    if "PixelSpacing" in seg and (not source_has_spacing or _zero_spacing(seg.PixelSpacing)):
        del seg.PixelSpacing


def seg_label(lesion: Optional[str], locations: Optional[list]) -> str:
    """A short segment label such as 'effusion (left lung base)'."""
    if not lesion:
        return "lesion"
    return f"{lesion} ({', '.join(locations)})" if locations else lesion
