"""Encode a phantom study as a DX PA DICOM file: 16-bit, fake but realistic tags, no real person.

Every UID derives from (seed, index); there are no timestamps, so the bytes are deterministic.
Names, ids and dates are visibly fake ("PHANTOM^..." and dates in the 2150s, as in MIMIC's
shifted dates).
"""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ils.phantom.sample import PhantomStudy

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
FIELD_MM = 430.0  # detector field of view (mm)


def _uid(study: PhantomStudy, what: str):
    return generate_uid(entropy_srcs=["ils-phantom", str(study.seed), str(study.index), what])


def stored_pixels(study: PhantomStudy) -> tuple[np.ndarray, float, float]:
    """(uint16 pixels, window centre, window width) in rescaled units."""
    m = study.meta
    maxv = (1 << study.bits_stored) - 1
    vals = np.float32(m["floor"]) + np.float32(m["gain"]) * study.image  # lungs dark, display order
    if study.photometric == "MONOCHROME1":
        vals = np.float32(1.0) - vals
    px = np.rint(vals * np.float32(maxv)).astype(np.uint16)
    lo, hi = np.percentile(px[:: 8, :: 8], [0.5, 99.5])
    centre = (lo + hi) / 2.0 + m["intercept"]
    width = max(hi - lo, 1.0)
    return px, float(centre), float(width)


def encode(study: PhantomStudy) -> bytes:
    """The DICOM Part 10 bytes of one study."""
    m = study.meta
    rows, cols = study.image.shape
    px, centre, width = stored_pixels(study)
    when = dt.date(2150, 1, 1) + dt.timedelta(days=m["day_offset"])
    birth = dt.date(when.year - m["age"], 1, 1)
    tod = f"{m['tod_s'] // 3600:02d}{m['tod_s'] // 60 % 60:02d}{m['tod_s'] % 60:02d}"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_PRESENTATION
    meta.MediaStorageSOPInstanceUID = _uid(study, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["ils-phantom-implementation"])
    meta.ImplementationVersionName = "ILS_PHANTOM"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = tod
    ds.AccessionNumber = f"PH{m['fake_patient']:06d}{study.index % 1000:03d}"
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "ILS Synthetic Phantom"
    ds.InstitutionName = "Synthetic Phantom Institute"
    ds.ReferringPhysicianName = "PHANTOM^REFERRER"
    ds.StudyDescription = "CHEST (PA)"
    ds.SeriesDescription = "PA"
    ds.PatientName = f"PHANTOM^SYNTHETIC{m['fake_patient']:06d}"
    ds.PatientID = f"PH{study.subject_id}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = m["sex"]
    ds.PatientAge = f"{m['age']:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.StudyInstanceUID = _uid(study, "study")
    ds.SeriesInstanceUID = _uid(study, "series")
    ds.StudyID = study.study_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    spacing = FIELD_MM / rows
    ds.ImagerPixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = study.photometric
    ds.PresentationLUTShape = "INVERSE" if study.photometric == "MONOCHROME1" else "IDENTITY"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = study.bits_stored
    ds.HighBit = study.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = f"{m['intercept']:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{centre:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = px.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
