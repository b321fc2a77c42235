"""Network failures in the operator's words: what failed, why, and what to do about it.

Every HTTP call site (the token endpoint, the REST API, the CometD endpoint) turns the
exception aiohttp, `ssl` or `socket` raised into an sfstream error through `network_error`,
so the same failure reads the same everywhere:

| failure | message | retryable |
|---|---|---|
| connection refused, unreachable | `cannot connect to HOST:PORT (connection refused)` | yes |
| the proxy refuses | `cannot connect to the proxy HOST:PORT (connection refused)` | yes |
| DNS | `DNS lookup of HOST failed (name not known)` | yes |
| no answer in time | `no answer from HOST within 30 s` | yes |
| untrusted certificate | `the certificate of HOST is not trusted (...); set SSL_CERT_FILE` | no |
| expired, wrong name | `the certificate of HOST has expired` / `... is not valid for HOST` | no |
| other TLS failures | `TLS handshake with HOST failed: wrong version number` | yes |
| cut connection | `the connection to HOST was closed before the answer (...)` | yes |

A certificate failure is terminal: the same certificate is refused every time until someone
installs the CA bundle (or the server gets a valid certificate). Everything else may pass.

A leaf: it imports only aiohttp, the standard library and `sfstream.errors`.
"""

from __future__ import annotations

import socket
import ssl
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from sfstream.errors import SfStreamError, TerminalError, TransportError

_CLOSED_ADVICE: Final = "check proxies/firewalls"
_TRUST_ADVICE: Final = "set SSL_CERT_FILE to your CA bundle"

# OpenSSL verification results (X509_V_ERR_*) that mean "not signed by a CA we trust".
_UNTRUSTED: Final = frozenset({2, 18, 19, 20, 21, 27})
_EXPIRED: Final = 10
_NOT_YET_VALID: Final = 9
_HOSTNAME_MISMATCH: Final = 62

_GAI_REASONS: Final = {
    socket.EAI_NONAME: "name not known",
    socket.EAI_AGAIN: "temporary failure: the DNS server did not answer",
    socket.EAI_FAIL: "the DNS server failed",
}
_NODATA = getattr(socket, "EAI_NODATA", None)  # not on every platform
if _NODATA is not None:
    _GAI_REASONS[_NODATA] = "the name has no address"


def host_of(url: str) -> str:
    """The host of `url` (`https://login.salesforce.com/x` -> `login.salesforce.com`)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    return host or url


def network_error(exc: BaseException, *, doing: str, url: str, timeout_s: float) -> SfStreamError:
    """The sfstream error for a request that failed on the network.

    Args:
        exc: what aiohttp (or `asyncio.timeout`, `ssl`, `socket`) raised.
        doing: what was being done, for the start of the message (`token request to URL`).
        url: the URL requested, naming the host when the exception does not.
        timeout_s: the time the request was given, for a timeout's message.

    Returns:
        A `TerminalError` for a certificate that is not accepted, a `TransportError`
        (retryable) for everything else; `exc` is not chained, the caller does that.
    """
    reason, retryable = describe(exc, url=url, timeout_s=timeout_s)
    message = f"{doing} failed: {reason}"
    return TransportError(message) if retryable else TerminalError(message)


def describe(exc: BaseException, *, url: str, timeout_s: float) -> tuple[str, bool]:
    """(the cause and remedy in words, whether retrying may help) for a network failure."""
    host = host_of(url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        host = exc.host or host
        where = f"{host}:{exc.port}" if exc.port else host
    else:
        where = host
    # Most specific first: aiohttp's classes subclass each other and OSError.
    cert = _certificate_error(exc)
    if cert is not None:
        return _certificate(cert, host), False
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(
        _os_error(exc), socket.gaierror
    ):
        return f"DNS lookup of {host} failed ({_gai_reason(_os_error(exc))})", True
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return f"the certificate of {host} does not match the pinned fingerprint", False
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return (
            f"the proxy refused to connect to {host} (HTTP {exc.status} {exc.message}); "
            "check the proxy settings (HTTPS_PROXY, NO_PROXY)"
        ), True
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot connect to the proxy {where} ({_os_reason(exc)})", True
    if isinstance(exc, TimeoutError) or isinstance(_os_error(exc), TimeoutError):
        return f"no answer from {host} within {timeout_s:g} s", True
    if _was_cut(exc):
        return f"the connection to {host} was closed before the answer ({_CLOSED_ADVICE})", True
    tls = _tls_error(exc)
    if tls is not None:
        return f"TLS handshake with {host} failed: {_ssl_reason(tls)}", True
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {where} ({_os_reason(exc)})", True
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{exc.url} is not a valid URL", False
    if isinstance(exc, OSError) and exc.strerror:
        return f"network error talking to {host} ({exc.strerror.lower()})", True
    text = str(exc).strip()
    return f"network error talking to {host}" + (f" ({text})" if text else ""), True


def _os_error(exc: BaseException) -> BaseException | None:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error
    return exc.__cause__


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    # aiohttp's ClientConnectorCertificateError is one too, without the verify result: the
    # ssl error it wraps comes first.
    for candidate in (_os_error(exc), exc):
        if isinstance(candidate, ssl.SSLCertVerificationError):
            return candidate
    return None


def _certificate(error: ssl.SSLCertVerificationError, host: str) -> str:
    code = getattr(error, "verify_code", None)
    detail = getattr(error, "verify_message", None) or _ssl_reason(error)
    if code == _EXPIRED:
        return f"the certificate of {host} has expired; renew it, or check this machine's clock"
    if code == _NOT_YET_VALID:
        return f"the certificate of {host} is not valid yet; check this machine's clock"
    if code == _HOSTNAME_MISMATCH:
        return f"the certificate of {host} is not valid for {host} ({detail})"
    if code in _UNTRUSTED:
        return (
            f"the certificate of {host} is not trusted (self-signed or unknown CA); {_TRUST_ADVICE}"
        )
    return f"the certificate of {host} is refused ({detail}); {_TRUST_ADVICE}"


def _gai_reason(error: BaseException | None) -> str:
    if isinstance(error, socket.gaierror):
        known = _GAI_REASONS.get(error.errno) if error.errno is not None else None
        if known is not None:
            return known
        if error.strerror:
            return error.strerror.lower()
    return "the name cannot be resolved"


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__.lower()


def _was_cut(exc: BaseException) -> bool:
    """The peer (or something between) closed or reset the connection."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return True
    cut = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
    return isinstance(exc, cut) or isinstance(_os_error(exc), cut)


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    for candidate in (_os_error(exc), exc):
        if isinstance(candidate, ssl.SSLError):
            return candidate
    return None


def _ssl_reason(error: ssl.SSLError) -> str:
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.replace("_", " ").lower()
    return str(error.strerror or error)
