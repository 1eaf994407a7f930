"""The attributes the receiver indexes, decoded from the raw values that structure.scan found.

Only these few elements are decoded; the rest of the header stays bytes on disk. Text is
decoded with the dataset's SpecificCharacterSet (ISO 2022 escapes, GB18030, UTF-8, ...) by
pydicom's own character set code.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import PersonName

SPECIFIC_CHARACTER_SET = 0x00080005
# Text VRs whose values are decoded with the character set; the rest are plain ASCII.
_TEXT = {"PatientID", "StudyDescription", "SeriesDescription", "AccessionNumber"}
_PERSON = {"PatientName"}

FIELDS: dict[str, str] = {
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "modality": "Modality",
    "series_number": "SeriesNumber",
    "series_description": "SeriesDescription",
    "body_part": "BodyPartExamined",
    "instance_number": "InstanceNumber",
}
_TAGS: dict[str, int] = {kw: int(tag_for_keyword(kw)) for kw in FIELDS.values()}  # type: ignore[arg-type]
WANTED_TAGS = frozenset([*_TAGS.values(), SPECIFIC_CHARACTER_SET])


@dataclass(frozen=True, slots=True)
class Header:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    modality: str
    series_number: str
    series_description: str
    body_part: str
    instance_number: str


def _clean(value: str) -> str:
    # NUL pads UIDs; inside a value it is garbage that PostgreSQL text cannot even hold.
    return value.replace("\x00", "").strip(" ")


def _ascii(raw: bytes) -> str:
    return _clean(raw.decode("ascii", "replace"))


def decode_header(values: dict[int, bytes]) -> Header:
    charset_raw = values.get(SPECIFIC_CHARACTER_SET, b"")
    terms = [t.strip() for t in _ascii(charset_raw).split("\\")] if charset_raw else [""]
    encodings = convert_encodings(terms)
    decoded: dict[str, str] = {}
    for name, keyword in FIELDS.items():
        raw = values.get(_TAGS[keyword])
        if not raw:
            decoded[name] = ""
        elif keyword in _PERSON:
            decoded[name] = _clean(str(PersonName(raw, encodings)))
        elif keyword in _TEXT:
            decoded[name] = _clean(decode_bytes(raw, encodings, {0x5C}))
        else:
            decoded[name] = _ascii(raw)
    return Header(**decoded)
