"""Target plug-ins: one module per kind of destination, all with the same interface.

A new kind of target is a settings model in core/config/models.py and one module here, named in
_PLUGINS. Modules are imported when first used, so that an installation that never sends to S3
never loads boto3.
"""

from __future__ import annotations

import importlib
from typing import Any

from caduceus.core.config.models import TargetSettings
from caduceus.dispatcher.targets.base import SendReport, Shipment, Target, TargetError

_PLUGINS: dict[str, str] = {
    "dicom": "caduceus.dispatcher.targets.dicom:DicomSender",
    "dicomtls": "caduceus.dispatcher.targets.dicom:DicomSender",
    "folder": "caduceus.dispatcher.targets.folder:FolderWriter",
    "dicomweb": "caduceus.dispatcher.targets.dicomweb:StowSender",
    "s3": "caduceus.dispatcher.targets.s3:S3Uploader",
    "sftp": "caduceus.dispatcher.targets.sftp:SftpUploader",
}


def plugin_for(settings: TargetSettings) -> Target:
    """The plug-in that sends to a configured target."""
    module_name, class_name = _PLUGINS[settings.type].split(":")
    plugin: Any = getattr(importlib.import_module(module_name), class_name)
    return plugin(settings)  # type: ignore[no-any-return]


__all__ = ["SendReport", "Shipment", "Target", "TargetError", "plugin_for"]
