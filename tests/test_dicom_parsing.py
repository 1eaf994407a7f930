"""The receiver's dataset walk and header decoding, on datasets pydicom writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from caduceus.core.dicom.header import WANTED_TAGS, decode_header
from caduceus.core.dicom.names import is_valid_uid, safe_name
from caduceus.core.dicom.structure import MalformedDataset, scan
from tests.support.dicomfiles import dataset_bytes


def encoded(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    from pydicom.filebase import DicomBytesIO

    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def sample() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    ds.StudyInstanceUID = "1.2.3"
    nested = Dataset()
    nested.CodeValue = "X"
    deeper = Dataset()
    deeper.CodeMeaning = "inner"
    nested.ConceptCodeSequence = Sequence([deeper])
    ds.ProcedureCodeSequence = Sequence([nested, Dataset()])
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.PixelData = b"\x00\x01" * 50
    ds["PixelData"].VR = "OW"
    return ds


@pytest.mark.parametrize("implicit,little", [(False, True), (True, True), (False, False)])
def test_scan_finds_pixel_data_and_values(implicit: bool, little: bool) -> None:
    data = encoded(sample(), implicit, little)
    layout = scan(data, implicit, little, 0, WANTED_TAGS)
    assert layout.end == len(data)
    assert layout.header_end == len(data) - 100 - (8 if implicit else 12)
    header = decode_header(layout.values)
    assert header.patient_name == "Doe^John"
    assert header.series_uid == "1.2.3.4"


def test_undefined_length_sequences_are_walked() -> None:
    ds = sample()
    ds["ProcedureCodeSequence"].is_undefined_length = True
    for item in ds.ProcedureCodeSequence:
        item.is_undefined_length_sequence_item = True
    data = encoded(ds)
    assert b"\xfe\xff\xdd\xe0" in data  # the sequence delimiter is really there
    assert scan(data, False, True).end == len(data)
    with pytest.raises(MalformedDataset):
        scan(data[: data.index(b"\xfe\xff\xdd\xe0")], False, True)


@pytest.mark.parametrize("cut", [1, 7, 50, 101])
def test_truncation_anywhere_is_detected(cut: int) -> None:
    data = encoded(sample())
    with pytest.raises(MalformedDataset, match="truncated"):
        scan(data[:-cut], False, True)


def test_encapsulated_pixel_data_fragments() -> None:
    path = Path(get_testdata_file("JPEG2000.dcm"))
    data = dataset_bytes(path)
    layout = scan(data, False, True, 0, WANTED_TAGS)
    assert layout.end == len(data)
    assert data[layout.header_end : layout.header_end + 4] == b"\xe0\x7f\x10\x00"
    with pytest.raises(MalformedDataset):
        scan(data[:-3], False, True)


def test_mislabelled_implicit_dataset_is_read_as_implicit() -> None:
    data = encoded(sample(), implicit=True)
    layout = scan(data, False, True, 0, WANTED_TAGS)
    assert layout.implicit
    assert decode_header(layout.values).study_uid == "1.2.3"


def test_garbage_is_malformed() -> None:
    with pytest.raises(MalformedDataset):
        scan(b"\x08\x00\x16\x00ZZ\x04\x00" + bytes(range(200)), False, True)
    with pytest.raises(MalformedDataset):
        scan(b"short", False, True)


# (SpecificCharacterSet, PatientName as text) pairs from PS3.5 Annex H, I and J examples.
CHARSETS = [
    ("ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 192", "Wang^XiaoDong=王^小東"),
    ("GB18030", "Wang^XiaoDong=王^小东"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞"),
    ("ISO_IR 144", "Иванов^Иван"),
]


@pytest.mark.parametrize("charset,name", CHARSETS)
def test_names_are_decoded_with_the_specific_character_set(
    charset: str | list[str], name: str
) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = name.split("^")[0]
    ds.StudyInstanceUID = "1.2"
    data = encoded(ds)
    assert name.encode("utf-8") not in data or charset == "ISO_IR 192"  # really re-encoded
    header = decode_header(scan(data, False, True, 0, WANTED_TAGS).values)
    assert header.patient_name == name
    assert header.study_description == name.split("^")[0]


def test_real_file_header() -> None:
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = dcmread(path)
    header = decode_header(scan(dataset_bytes(path), False, True, 0, WANTED_TAGS).values)
    assert header.patient_name == str(ds.PatientName)
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.modality == "CT"


@pytest.mark.parametrize(
    "value,safe",
    [
        ("1.2.840.10008.1.2", True),
        ("../../x", False),
        ("1.2.3\x00", False),
        ("", False),
        ("1." + "2" * 70, False),
        ("/etc/passwd", False),
        ("1..2", False),
    ],
)
def test_safe_names(value: str, safe: bool) -> None:
    assert is_valid_uid(value) is safe
    name = safe_name(value)
    assert (name == value) is safe
    assert "/" not in name and "\x00" not in name and name not in ("", ".", "..")
    assert safe_name(value) == name  # stable: the same UID always lands in the same place


def test_max_elements_bounds_the_walk() -> None:
    """Where bytes are cheap for a sender (deflate), the number of elements walked is bounded."""
    data = b"\x09\x00\x10\x00LO\x00\x00" * 100
    assert scan(data, False, True, max_elements=100).end == len(data)
    with pytest.raises(MalformedDataset, match="more than 99 elements"):
        scan(data, False, True, max_elements=99)
    # Items inside sequences count too.
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    nested = (
        b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
        + item * 50
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    assert scan(nested, False, True, max_elements=200).end == len(nested)
    with pytest.raises(MalformedDataset, match="more than 60 elements"):
        scan(nested, False, True, max_elements=60)
