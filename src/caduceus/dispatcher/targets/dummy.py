"""Dummy target: accepts every file and keeps none, so that rules can be tried out (mercure's
"dummy" target). The task's target is recorded as done, like any delivery."""

from __future__ import annotations

from pathlib import Path

from caduceus.core.config.models import DummyTarget
from caduceus.dispatcher.targets.base import SendReport, Shipment


class DummySink:
    def __init__(self, settings: DummyTarget):
        self.settings = settings

    def test(self) -> str:
        return "a dummy target: it accepts everything and keeps nothing"

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        report = SendReport()
        for path in files:
            if shipment.interrupted():
                report.interrupted = True
                break
            report.accepted.append(path)
        return report
