"""Generated series for tests, benchmarks and the self-test: valid DICOM, no real patient."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
SOP_CLASSES = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}


@dataclass(frozen=True)
class SeriesSpec:
    count: int = 10
    rows: int = 64
    columns: int = 64
    modality: str = "CT"
    patient_id: str = "SYNTH001"
    patient_name: str = "Synthetic^Patient"
    study_description: str = "SYNTHETIC STUDY"
    series_description: str = "SYNTHETIC SERIES"
    study_uid: str = ""
    series_uid: str = ""
    character_set: str = "ISO_IR 192"
    accession_number: str = "ACC0001"


def generate(spec: SeriesSpec) -> Iterator[Dataset]:
    """Yield spec.count instances of one series, 16-bit monochrome, explicit VR little endian."""
    study_uid = spec.study_uid or generate_uid()
    series_uid = spec.series_uid or generate_uid()
    sop_class = SOP_CLASSES.get(spec.modality, CT_IMAGE_STORAGE)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 4096, size=(spec.rows, spec.columns), dtype=np.uint16)
    for index in range(spec.count):
        ds = Dataset()
        ds.SpecificCharacterSet = spec.character_set
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = spec.accession_number
        ds.Modality = spec.modality
        ds.StudyDescription = spec.study_description
        ds.SeriesDescription = spec.series_description
        ds.PatientName = spec.patient_name
        ds.PatientID = spec.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0, 0, float(index)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 1.0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.columns
        ds.PixelSpacing = [0.5, 0.5]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = np.roll(base, index, axis=0).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        yield ds


def write_series(folder: Path, spec: SeriesSpec) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in generate(spec):
        path = folder / f"{ds.InstanceNumber:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
