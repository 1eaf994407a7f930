"""The names a rule may give a tag, and the one key each stands for in the tags it reads.

mercure's rules name tags three ways (``tags.Keyword``, ``tags["Keyword"]``, ``@Keyword@``);
attribute access is case-insensitive there, indexing is not. Tags outside the standard
dictionary are named by number, ``(gggg,eeee)`` as mercure's receiver writes them, or by
private creator and element, ``(gggg,ee,CREATOR)`` (GDCM's notation), which finds the
element whatever block the sending device reserved for that creator.
"""

from __future__ import annotations

import re

from pydicom.datadict import dictionary_keyword, keyword_dict, tag_for_keyword

_NUMBER = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?")
_PRIVATE = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{2}|[0-9A-Fa-f]{4})\s*,(.+?)\)?")
_BY_LOWER = {keyword.lower(): keyword for keyword in keyword_dict}

# What mercure's receiver adds to every file's tags about the association that brought it:
# the sender's AE title and address and the AE title it called. The router fills them in from
# the association's row; where no association is known (a rule tried on a file), they are ''.
SENDER_TAGS = ("SenderAET", "SenderAddress", "ReceiverAET")
_SENDER_BY_LOWER = {name.lower(): name for name in SENDER_TAGS}


# The tags mercure's receiver writes for every file, empty when the file lacks them
# (getdcmtags' fixed list); a rule that reads one of them sees '' rather than missing.
MERCURE_ALWAYS_PRESENT = frozenset(
    {
        "SpecificCharacterSet", "SeriesInstanceUID", "SOPInstanceUID", "Modality",
        "BodyPartExamined", "ProtocolName", "RetrieveAETitle", "StationAETitle",
        "Manufacturer", "ManufacturerModelName", "StudyDescription", "CodeValue",
        "CodeMeaning", "SeriesDescription", "PatientName", "PatientID", "PatientBirthDate",
        "PatientSex", "AccessionNumber", "ReferringPhysicianName", "StudyID", "SeriesNumber",
        "StudyInstanceUID", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
        "SequenceName", "ScanningSequence", "SequenceVariant", "MagneticFieldStrength",
        "StationName", "DeviceSerialNumber", "DeviceUID", "SoftwareVersions",
        "ContrastBolusAgent", "ImageComments", "SliceThickness", "InstanceNumber",
        "AcquisitionNumber", "InstitutionName", "AcquisitionType", "ImageType",
        "MediaStorageSOPClassUID", *SENDER_TAGS,
    }
)  # fmt: skip


def number_key(group: int, element: int) -> str:
    """The key of a tag that has no keyword, as the tags a rule reads hold it."""
    return f"({group:04X},{element:04X})"


def private_key(group: int, element: int, creator: str) -> str:
    return f"({group:04X},{element:02X},{creator})"


def tag_key(name: str, *, exact_case: bool) -> str | None:
    """The key a rule's name for a tag stands for, or None when it names no tag."""
    if tag_for_keyword(name) is not None or name in SENDER_TAGS:
        return name
    if not exact_case and name.lower() in _SENDER_BY_LOWER:
        return _SENDER_BY_LOWER[name.lower()]
    if not exact_case and name.lower() in _BY_LOWER:
        return _BY_LOWER[name.lower()]
    if match := _NUMBER.fullmatch(name):
        group, element = int(match[1], 16), int(match[2], 16)
        try:
            return dictionary_keyword((group << 16) | element) or number_key(group, element)
        except KeyError:
            return number_key(group, element)
    if (match := _PRIVATE.fullmatch(name)) and int(match[1], 16) % 2 and match[3].strip():
        return private_key(int(match[1], 16), int(match[2], 16) & 0xFF, match[3].strip())
    return None


def private_parts(key: str) -> tuple[int, int, str] | None:
    """(group, element within the block, creator) of a key made by private_key()."""
    match = _PRIVATE.fullmatch(key)
    if match is None or len(match[2]) != 2:
        return None
    return int(match[1], 16), int(match[2], 16), match[3]
