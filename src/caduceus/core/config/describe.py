"""Configured things described in a line for people (the CLI's lists, the web's tables).

Here, below both the command line and the web, so neither imports the other for it.
"""

from __future__ import annotations

from caduceus.core.config.models import (
    DicomTarget,
    DicomWebTarget,
    DummyTarget,
    FolderTarget,
    RsyncTarget,
    S3Target,
    TargetSettings,
    XnatTarget,
    masked_url,
)


def where_of(target: TargetSettings) -> str:
    """Where a target sends to, in a line; never a secret."""
    if isinstance(target, DicomTarget):
        host = target.host or "(the sender)"
        return f"{target.called_aet}@{host}:{target.port}"
    if isinstance(target, FolderTarget):
        return target.path
    if isinstance(target, DicomWebTarget):
        return masked_url(target.url)
    if isinstance(target, S3Target):
        return f"s3://{target.bucket}/{target.prefix}"
    if isinstance(target, XnatTarget):
        return f"{masked_url(target.url)} (project {target.project_id})"
    if isinstance(target, DummyTarget):
        return "(nowhere: a dummy target)"
    scheme = "rsync" if isinstance(target, RsyncTarget) else "sftp"
    return f"{scheme}://{target.user}@{target.host}:{target.port}/{target.folder}"
