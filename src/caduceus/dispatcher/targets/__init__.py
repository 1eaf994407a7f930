"""Target plug-ins: one module per kind of destination, all with the same interface."""

from __future__ import annotations

from caduceus.core.config.models import DicomTarget, FolderTarget
from caduceus.dispatcher.targets.base import SendReport, Target, TargetError
from caduceus.dispatcher.targets.dicom import DicomSender
from caduceus.dispatcher.targets.folder import FolderWriter

_PLUGINS: dict[type, type[Target]] = {DicomTarget: DicomSender, FolderTarget: FolderWriter}


def plugin_for(settings: DicomTarget | FolderTarget) -> Target:
    """The plug-in that sends to a configured target. A new kind of target is one new module."""
    return _PLUGINS[type(settings)](settings)  # type: ignore[call-arg]


__all__ = ["SendReport", "Target", "TargetError", "plugin_for"]
