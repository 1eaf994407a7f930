"""Target plug-ins: one module per kind of destination, all with the same interface.

A new kind of target is a settings model in core/config/models.py and one module here, named in
_PLUGINS. Modules are imported when first used, so that an installation that never sends to S3
never loads boto3.
"""

from __future__ import annotations

import importlib
from typing import Any

from caduceus.core.config.models import DicomWebTarget, TargetSettings
from caduceus.dispatcher.targets.base import SendReport, Shipment, Target, TargetError

_PLUGINS: dict[str, str] = {
    "dicom": "caduceus.dispatcher.targets.dicom:DicomSender",
    "dicomtls": "caduceus.dispatcher.targets.dicom:DicomSender",
    "folder": "caduceus.dispatcher.targets.folder:FolderWriter",
    "dicomweb": "caduceus.dispatcher.targets.dicomweb:StowSender",
    "s3": "caduceus.dispatcher.targets.s3:S3Uploader",
    "sftp": "caduceus.dispatcher.targets.sftp:SftpUploader",
    "rsync": "caduceus.dispatcher.targets.rsync:RsyncUploader",
    "xnat": "caduceus.dispatcher.targets.xnat:XnatUploader",
    "dummy": "caduceus.dispatcher.targets.dummy:DummySink",
}
# A DICOMweb target with a file:// URL writes into a local folder instead (as in mercure).
_FILE_DICOMWEB = "caduceus.dispatcher.targets.dicomweb_files:FileStore"


def plugin_for(settings: TargetSettings) -> Target:
    """The plug-in that sends to a configured target."""
    where = _PLUGINS[settings.type]
    if isinstance(settings, DicomWebTarget) and settings.url.startswith("file://"):
        where = _FILE_DICOMWEB
    module_name, class_name = where.split(":")
    plugin: Any = getattr(importlib.import_module(module_name), class_name)
    return plugin(settings)  # type: ignore[no-any-return]


__all__ = ["SendReport", "Shipment", "Target", "TargetError", "plugin_for"]
