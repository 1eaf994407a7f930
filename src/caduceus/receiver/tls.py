"""DICOM over TLS on the receiver's second port: the server context, and failed handshakes
described in one line.

The handshake itself runs in the acceptor's selector (acceptor.py), without a thread, under the
same ARTIM deadline and connection caps as a plain connection.
"""

from __future__ import annotations

import ssl

from caduceus.core.settings import Settings


class TlsSetupError(Exception):
    """The TLS port's certificate, key or CA could not be loaded (said at start, not later)."""


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the receiver's TLS port, or None when the port is off."""
    if not settings.receiver_tls_port:
        return None
    certificate, key = settings.receiver_tls_certificate, settings.receiver_tls_key
    assert certificate is not None and key is not None  # checked by Settings
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # BCP 195 (which DICOM PS3.15 B.9 follows): TLS 1.2 or newer.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_SINGLE_ECDH_USE | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"cannot load the TLS certificate {certificate} and key {key}: {_why(exc)}"
        ) from exc
    ca = settings.receiver_tls_ca_certificate
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"cannot load the TLS CA certificate {ca}: {_why(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return getattr(exc, "strerror", None) or str(exc)


# OpenSSL's reasons for the failures a peer causes, in words an administrator acts on.
_REASONS = {
    "WRONG_VERSION_NUMBER": "not TLS (plain DICOM sent to the TLS port?)",
    "HTTP_REQUEST": "not TLS (an HTTP request)",
    "UNSUPPORTED_PROTOCOL": "TLS version too old (1.2 at least)",
    "NO_PROTOCOLS_AVAILABLE": "TLS version too old (1.2 at least)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "CERTIFICATE_VERIFY_FAILED": "client certificate not trusted",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "NO_SHARED_CIPHER": "no cipher in common",
    "UNEXPECTED_MESSAGE": "malformed TLS handshake",
    "UNEXPECTED_RECORD": "malformed TLS handshake",
    "RECORD_LENGTH_MISMATCH": "malformed TLS handshake",
    "PACKET_LENGTH_TOO_LONG": "malformed TLS handshake",
    "LENGTH_MISMATCH": "malformed TLS handshake",
    "BAD_PACKET_LENGTH": "malformed TLS handshake",
}


def handshake_failure(exc: BaseException) -> str:
    """A failed handshake in one short line; the details are OpenSSL's reason code."""
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = "CERTIFICATE_VERIFY_FAILED"
        if isinstance(exc, ssl.SSLEOFError):
            return "TLS handshake failed: closed during the handshake"
        return f"TLS handshake failed: {_REASONS.get(reason, reason or 'protocol error')}"
    if isinstance(exc, ConnectionError):
        return "TLS handshake failed: connection lost"
    return f"TLS handshake failed: {type(exc).__name__}"
