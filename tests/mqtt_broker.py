"""A real mosquitto for tests: free loopback port, generated config, optional TLS and passwords.

Usage::

    broker = MosquittoBroker(tmp_path)                  # plain mqtt://, anonymous
    broker = MosquittoBroker(tmp_path, tls=make_tls(tmp_path), passwords={"gw": "s3cret"})
    with broker:                                        # start() ... stop()
        broker.url                                      # mqtt://127.0.0.1:<port> or mqtts://...
        broker.stop(); broker.start()                   # an outage: same port, sessions kept on disk
        broker.pause(); broker.resume()                 # a hung broker (SIGSTOP/SIGCONT)
        broker.wait_for_log("Client gw-1 disconnected", timeout=5)

Persistence is on, so sessions (subscriptions, queued QoS 1/2 messages) survive `stop()`/`start()`
(mosquitto saves its database on SIGTERM). The broker's log is read by a thread; `wait_for_log`
synchronises on it instead of sleeping. Needs /usr/sbin/mosquitto (and `mosquitto_passwd`,
`openssl` for the options that use them); tests using it carry `@pytest.mark.mqtt`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["MOSQUITTO", "MosquittoBroker", "TlsFiles", "free_port", "make_tls"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made by `make_tls`: a CA, a server and a client certificate it signed, a stranger CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting only it must fail


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


def _signed(directory: Path, name: str, ca_key: Path, ca_cert: Path, ext: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    extfile = directory / f"{name}.ext"
    extfile.write_text(ext)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", extfile,
    )  # fmt: skip
    return key, cert


def make_tls(directory: Path) -> TlsFiles:
    """Generate a test PKI with openssl: CA, server cert for 127.0.0.1/localhost, client cert, other CA."""
    d = directory / "pki"
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(d, "test-ca")
    server_key, server_cert = _signed(
        d, "server", ca_key, ca_cert, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    client_key, client_cert = _signed(d, "client", ca_key, ca_cert, "extendedKeyUsage=clientAuth\n")
    _, other_ca = _ca(d, "other-ca")
    return TlsFiles(ca_cert, server_cert, server_key, client_cert, client_key, other_ca)


class MosquittoBroker:
    """One mosquitto process, restartable on the same port with the same config and database."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: TlsFiles | None = None,
        require_certificate: bool = True,
        passwords: dict[str, str] | None = None,
        extra_config: str = "",
    ) -> None:
        self.directory = directory / f"mosquitto-{id(self):x}"
        self.directory.mkdir(parents=True)
        self.port = free_port()
        self.tls = tls
        self.config_file = self.directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.directory}/",
            "log_dest stderr",  # unbuffered, unlike stdout into a pipe
            "log_type all",
            "connection_messages true",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, who cannot read our tmp dir
        if passwords:
            password_file = self.directory / "passwords"
            password_file.touch()
            for user, password in passwords.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
            lines += [f"password_file {password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        self.config_file.write_text("\n".join(lines) + "\n" + extra_config)
        self._process: subprocess.Popen[str] | None = None
        self._log: list[str] = []
        self._log_changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and return once it listens; raise `RuntimeError` with its log if it does not."""
        assert not self.running, "already running"
        mark = self._log_length()
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        threading.Thread(target=self._read_log, args=(self._process,), daemon=True).start()
        if not self.wait_for_log(r"mosquitto version \S+ running", timeout=timeout, since=mark):
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its database) and wait for the process to end."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # in case it was paused
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: an outage without a database save."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets open but answers nothing (a hung or partitioned peer)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def wait_for_log(self, pattern: str, timeout: float, since: int = 0) -> bool:
        """Wait until a log line from index `since` on matches `pattern` (a regex); False on timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = since
        with self._log_changed:
            while True:
                for line in self._log[checked:]:
                    if regex.search(line):
                        return True
                checked = max(checked, len(self._log))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._log_changed.wait(remaining)

    def log_text(self) -> str:
        with self._log_changed:
            return "\n".join(self._log)

    def _log_length(self) -> int:
        with self._log_changed:
            return len(self._log)

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._log_changed:
                self._log.append(line.rstrip("\n"))
                self._log_changed.notify_all()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
