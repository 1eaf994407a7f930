"""Association negotiation for a storage SCP: whom to accept, and with which contexts.

PDU decoding and encoding use pynetdicom's PDU classes; the decisions are ours. Unlike
pynetdicom's acceptor, which picks from its own ordered list (implicit VR first), we take the
first transfer syntax the *sender* proposed that we can store, so what we keep is what it had.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import sop_class as sop
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass, StorageServiceClass, VerificationServiceClass

from caduceus.core.dicom.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# Transfer syntaxes whose encoding we know, so the stored file can be read back. Compressed ones
# are stored as received; the JPIP and other referenced-pixel syntaxes carry no pixel data.
STORABLE_SYNTAXES = frozenset(str(ts) for ts in AllTransferSyntaxes)
# With compressed images refused (mercure's accept_compressed_images off): the syntaxes whose
# pixel data is native. mercure's storescp then accepts implicit and explicit little endian and
# explicit big endian; deflated is kept too, its pixels are native once inflated (every DICOM
# reader inflates it) and refusing it would only make a sender transcode for nothing.
UNCOMPRESSED_SYNTAXES = frozenset(str(ts) for ts in AllTransferSyntaxes if not ts.is_compressed)

# A-ASSOCIATE-RJ (result, source, reason) per PS3.8 9.3.4.
REJECT_NO_REASON = (1, 1, 1)
REJECT_APPLICATION_CONTEXT = (1, 1, 2)
REJECT_CALLING_AET = (1, 1, 3)
REJECT_CALLED_AET = (1, 1, 7)
REJECT_PROTOCOL_VERSION = (1, 2, 2)
REJECT_BUSY = (2, 3, 2)  # transient: local limit exceeded
REJECT_UNAVAILABLE = (2, 3, 1)  # transient: temporary congestion (the database is down)


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: UID


@dataclass(slots=True)
class Negotiated:
    calling_aet: str
    called_aet: str
    peer_max_pdu: int
    contexts: dict[int, AcceptedContext] = field(default_factory=dict)
    rejected_contexts: int = 0


@dataclass(frozen=True, slots=True)
class Policy:
    ae_title: str
    check_called_aet: bool
    allowed_calling: tuple[str, ...]  # "AET" or "AET@host"; empty allows everyone
    accept_private_sop_classes: bool
    max_pdu: int
    accept_compressed: bool = True  # False: UNCOMPRESSED_SYNTAXES only


class Rejection(Exception):
    def __init__(self, pdu: bytes, reason: str):
        super().__init__(reason)
        self.pdu = pdu
        self.reason = reason


def quiet_codec_logs() -> None:
    """pynetdicom logs a traceback for every undecodable request; we log one line of our own."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def decode_request(body: bytes) -> A_ASSOCIATE_RQ:
    rq = A_ASSOCIATE_RQ()
    rq.decode(body)
    return rq


def reject_pdu(result: tuple[int, int, int]) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _storable_class(uid: str, accept_private: bool) -> bool:
    service = sop.uid_to_service_class(uid)
    if service in (StorageServiceClass, VerificationServiceClass):
        return True
    # An unknown UID is most likely a vendor's private storage class (CSA, raw data, ...).
    return accept_private and service is ServiceClass and UID(uid).is_valid


def _calling_allowed(policy: Policy, calling: str, host: str) -> bool:
    if not policy.allowed_calling:
        return True
    for entry in policy.allowed_calling:
        aet, _, pinned_host = entry.partition("@")
        if aet == calling and (not pinned_host or pinned_host == host):
            return True
    return False


def negotiate(rq: A_ASSOCIATE_RQ, policy: Policy, peer_host: str) -> tuple[bytes, Negotiated]:
    """Decide on an association request. Returns the A-ASSOCIATE-AC PDU or raises Rejection."""
    calling = rq.calling_ae_title.strip()
    called = rq.called_ae_title.strip()
    if rq.protocol_version != 1:
        raise Rejection(reject_pdu(REJECT_PROTOCOL_VERSION), "protocol version not supported")
    if str(rq.application_context_name) != DICOM_APPLICATION_CONTEXT:
        raise Rejection(reject_pdu(REJECT_APPLICATION_CONTEXT), "not the DICOM application context")
    if policy.check_called_aet and called != policy.ae_title:
        raise Rejection(reject_pdu(REJECT_CALLED_AET), f"called AE title {called!r} is not ours")
    if not _calling_allowed(policy, calling, peer_host):
        raise Rejection(
            reject_pdu(REJECT_CALLING_AET),
            f"calling AE title {calling!r} from {peer_host} not allowed",
        )

    request = rq.to_primitive()
    peer_max = 0
    roles_requested: list[SCP_SCU_RoleSelectionNegotiation] = []
    async_requested = False
    for item in request.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
            roles_requested.append(item)
        elif isinstance(item, AsynchronousOperationsWindowNegotiation):
            async_requested = True

    result = Negotiated(calling_aet=calling, called_aet=called, peer_max_pdu=peer_max)
    results: list[PresentationContext] = []
    acceptable = STORABLE_SYNTAXES if policy.accept_compressed else UNCOMPRESSED_SYNTAXES
    for proposed in request.presentation_context_definition_list:
        context_id = int(proposed.context_id or 0)
        context = PresentationContext()
        context.context_id = proposed.context_id
        context.abstract_syntax = proposed.abstract_syntax
        abstract = str(proposed.abstract_syntax)
        if not _storable_class(abstract, policy.accept_private_sop_classes):
            context.result = 0x03  # abstract syntax not supported
            context.transfer_syntax = [proposed.transfer_syntax[0]]
        else:
            chosen = next((ts for ts in proposed.transfer_syntax if str(ts) in acceptable), None)
            if chosen is None:
                context.result = 0x04  # transfer syntaxes not supported
                context.transfer_syntax = [proposed.transfer_syntax[0]]
            else:
                context.result = 0x00
                context.transfer_syntax = [chosen]
                result.contexts[context_id] = AcceptedContext(
                    context_id, abstract, UID(str(chosen))
                )
        if context.result:
            result.rejected_contexts += 1
        results.append(context)

    accept = A_ASSOCIATE()
    accept.application_context_name = DICOM_APPLICATION_CONTEXT
    accept.calling_ae_title = rq.calling_ae_title
    accept.called_ae_title = rq.called_ae_title
    accept.result = 0x00
    accept.presentation_context_definition_results_list = results
    user_info: list[Any] = []
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = policy.max_pdu
    user_info.append(max_length)
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    user_info.append(impl_uid)
    impl_version = ImplementationVersionNameNotification()
    impl_version.implementation_version_name = IMPLEMENTATION_VERSION
    user_info.append(impl_version)
    if async_requested:
        # We perform operations one at a time; saying so is always a valid answer.
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        user_info.append(window)
    for role in roles_requested:
        # As a storage SCP we let the peer be the SCU; we never act as SCU for it.
        reply = SCP_SCU_RoleSelectionNegotiation()
        reply.sop_class_uid = role.sop_class_uid
        reply.scu_role = bool(role.scu_role)
        reply.scp_role = False
        user_info.append(reply)
    accept.user_information = user_info
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(accept)
    return bytes(pdu.encode()), result
