"""The self-test's DICOM side: C-ECHO and C-STORE to our own receiver, with the lean SCU
the dispatcher uses, so the test goes through the same code as real traffic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from caduceus.core.net.scu import AssociationFailed, AssociationLost, StoreSCU
from caduceus.core.settings import Settings

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2"
CALLING_AET = "SELFTEST"
# Addresses that mean "listen everywhere": the receiver is then asked on this machine.
ANYWHERE = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - compared, never bound


class StageFailed(Exception):
    """A stage did not pass; the message says why, for the person who started the test."""


@dataclass(frozen=True)
class Receiver:
    host: str
    port: int
    ae_title: str

    @classmethod
    def of(cls, settings: Settings) -> Receiver:
        host = "127.0.0.1" if settings.dicom_host in ANYWHERE else settings.dicom_host
        return cls(host, settings.dicom_port, settings.ae_title)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def connect(self, contexts: list[tuple[str, str]], timeout: float) -> StoreSCU:
        try:
            return StoreSCU(
                self.host, self.port, CALLING_AET, self.ae_title, contexts, timeout=timeout
            )
        except AssociationFailed as exc:
            raise StageFailed(
                f"no association with the receiver {self}: {exc} (is the receiver running, "
                f"and is {CALLING_AET} allowed to call it?)"
            ) from exc


def echo(receiver: Receiver, timeout: float) -> str:
    scu = receiver.connect([(VERIFICATION, IMPLICIT_LITTLE_ENDIAN)], timeout)
    try:
        response = scu.echo()
    except KeyError as exc:
        raise StageFailed(f"{receiver} refused the Verification SOP class") from exc
    except AssociationLost as exc:
        raise StageFailed(f"{receiver} ended the association during C-ECHO: {exc}") from exc
    finally:
        scu.release()
    if not response.ok:
        raise StageFailed(f"{receiver} answered C-ECHO with status 0x{response.status:04X}")
    return f"{receiver} answered"


@dataclass(frozen=True)
class Outgoing:
    path: Path
    sop_class: str
    sop_instance: str
    syntax: str


def describe(paths: list[Path]) -> list[Outgoing]:
    found = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        found.append(
            Outgoing(
                path,
                str(ds.file_meta.MediaStorageSOPClassUID),
                str(ds.SOPInstanceUID),
                str(ds.file_meta.TransferSyntaxUID),
            )
        )
    return found


def store(receiver: Receiver, files: list[Outgoing], timeout: float) -> str:
    contexts = sorted({(f.sop_class, f.syntax) for f in files})
    scu = receiver.connect(contexts, timeout)
    refused: list[str] = []
    try:
        for item in files:
            try:
                response = scu.store_file(item.path, item.sop_class, item.sop_instance, item.syntax)
            except KeyError as exc:
                raise StageFailed(
                    f"{receiver} refused the SOP class {item.sop_class} in {item.syntax}"
                ) from exc
            except AssociationLost as exc:
                raise StageFailed(f"{receiver} ended the association: {exc}") from exc
            if not response.ok:
                comment = f" ({response.comment})" if response.comment else ""
                refused.append(f"0x{response.status:04X}{comment}")
    finally:
        scu.release()
    if refused:
        raise StageFailed(
            f"{len(refused)} of {len(files)} instance(s) refused, e.g. status {refused[0]}"
        )
    return f"{len(files)} instance(s) stored by {receiver}"
