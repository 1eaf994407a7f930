"""The router run inside a test, with a configuration of a few rules over fixed targets.

The router's passes take `now` (see tests/support/clock.py), so a test decides when a group
is complete instead of waiting for its trigger.
"""

from __future__ import annotations

from typing import Any

from caduceus.core.config.models import Config
from caduceus.core.storage import DataRoot
from caduceus.router.completion import Router
from tests.support.processes import Caduceus

# Targets that rules may name; nothing is sent to them (the dispatcher's tests bring their own).
TARGETS = {
    "pacs": {"type": "dicom", "host": "127.0.0.1", "port": 104, "called_aet": "PACS"},
    "archive": {"type": "folder", "path": "/tmp/archive"},
}
MODULES = {"ai": {"command": ["true"]}}


def config(rules: dict[str, Any], **settings: Any) -> Config:
    """A configuration with these rules and settings over TARGETS and MODULES."""
    return Config.model_validate(
        {"settings": settings, "targets": TARGETS, "modules": MODULES, "rules": rules}
    )


def router_for(receiver: Caduceus) -> Router:
    """A router over the receiver's database and data root."""
    return Router(receiver.engine(), DataRoot(receiver.home))
