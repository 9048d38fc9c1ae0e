"""The service's DICOM Segmentation against dciodvfy (dicom3tools) and the attributes it asked for."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from ils.config import load_config
from ils.phantom.dicom import encode
from ils.phantom.sample import generate_study
from serve.codecs import dicom_seg


def _source(drop: tuple[str, ...] = (), zero_spacing: bool = False) -> bytes:
    """A synthetic phantom DICOM, optionally without some attributes or with a zero Pixel Spacing."""
    ds = pydicom.dcmread(io.BytesIO(encode(generate_study(0, 1, load_config(None, ["sample.size=96"])))))
    for key in drop:
        delattr(ds, key)
    if zero_spacing:
        ds.PixelSpacing = [0, 0]
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


VARIANTS = {
    "as-made": _source,
    "no-spacing-no-orientation": lambda: _source(("PixelSpacing", "ImagerPixelSpacing", "PatientOrientation")),
    "zero-spacing": lambda: _source(zero_spacing=True),
}


def _seg(source: bytes) -> bytes:
    src = pydicom.dcmread(io.BytesIO(source), stop_before_pixels=True)
    mask = np.zeros((src.Rows, src.Columns), bool)
    mask[20:50, 10:40] = True
    return dicom_seg(source, mask, label="effusion (left lung base)", model_id="rosalia-tiny:test")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_seg_orientation_and_spacing_follow_the_source(variant):
    source = VARIANTS[variant]()
    src = pydicom.dcmread(io.BytesIO(source), stop_before_pixels=True)
    seg = pydicom.dcmread(io.BytesIO(_seg(source)))
    assert "PatientOrientation" in seg and list(seg.PatientOrientation or []) == list(src.get("PatientOrientation") or [])
    spacings = [e.value for e in seg.iterall() if e.tag == 0x00280030]
    if variant == "as-made":
        assert spacings and all(float(v) > 0 for s in spacings for v in s)
    else:
        assert spacings == []  # no spacing invented (nor written as zero) when the source has none


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_seg_passes_dciodvfy(variant, tmp_path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; scripts/system-deps.sh installs it as root)")
    path = tmp_path / "seg.dcm"
    path.write_bytes(_seg(VARIANTS[variant]()))
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors
