"""What one connection attempt needs that is not connection state: TLS setup, backoff, and failures
said for the person reading the log.

Every failure becomes one line naming the broker, what went wrong and, where we can guess, what to
check (`ca_file`, `cert_file`, the password). The connection logs it once per distinct reason and
keeps it in `metrics["last_error"]`.
"""

from __future__ import annotations

import random
import socket
import ssl

from edgeflow.mqtt.settings import MqttSettings

__all__ = ["SetupError", "backoff_delay", "describe_failure", "early_close_hint", "refusal_text", "tls_context"]

_REFUSAL_HINTS = {
    "Bad user name or password": "check username and the password",
    "Not authorized": "check username and the password; or the broker does not allow this client id",
    "Client identifier not valid": "the broker refuses the client_id",
    "Identifier rejected": "the broker refuses the client_id",
    "Unsupported protocol version": "try protocol = 4 (MQTT 3.1.1)",
}


class SetupError(Exception):
    """An attempt failed before the network (a secret or TLS file), with a message written for people."""


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """The client TLS context: `ca_file` (else the system's CAs), the client certificate if any.

    Runs in the connect thread (it reads files). Raises `SetupError` naming the files.
    """
    s = settings
    try:
        context = ssl.create_default_context(cafile=s.ca_file)
        if s.cert_file is not None:
            context.load_cert_chain(s.cert_file, s.key_file)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (s.ca_file, s.cert_file, s.key_file) if f)
        raise SetupError(f"cannot load the TLS files ({files}): {exc}") from None
    if s.tls_insecure:
        context.check_hostname = False  # the chain is still verified
    return context


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential in `attempt` (0-based), capped at `maximum`, jittered down to half."""
    cap = min(maximum, initial * 2 ** min(attempt, 32))
    return random.uniform(cap / 2, cap)


def describe_failure(exc: BaseException, settings: MqttSettings) -> str:
    """An exception from opening the socket (DNS, TCP, TLS handshake, secrets), said for people."""
    address = settings.address
    where = f"{address.host}:{address.port}"
    if isinstance(exc, SetupError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {where} is not trusted: {exc.verify_message} (check ca_file)"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        hint = ""
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
            hint = " (does the broker want a client certificate? check cert_file and key_file)"
        elif "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
            hint = " (the broker does not trust our client certificate)"
        return f"TLS handshake with {where} failed: {reason}{hint}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {address.host}: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (is the broker running?)"
    if isinstance(exc, TimeoutError):
        return f"timed out connecting to {where}"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"cannot connect to {where}: {type(exc).__name__}: {exc}"


def refusal_text(reason_name: str) -> str:
    """A negative CONNACK (`reason_name` as paho names the reason code), with a hint when we have one."""
    hint = _REFUSAL_HINTS.get(reason_name)
    return f"the broker refused the connection: {reason_name}" + (f" ({hint})" if hint else "")


def early_close_hint(error: str, settings: MqttSettings) -> str:
    """A hint for a TLS connection closed before CONNACK, given paho's error line ("" if none applies).

    A broker refusing our client certificate (or its absence) often just closes the TLS session after
    the handshake, without an alert: name the likely cause.
    """
    if not settings.address.tls or ("SSL" not in error and "EOF" not in error):
        return ""
    if settings.cert_file is None:
        return " (does the broker want a client certificate? set cert_file and key_file)"
    return " (does the broker trust our client certificate?)"
