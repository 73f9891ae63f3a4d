"""A real `redis-server` per test or per session, on a free port, that tests can kill,
freeze and restart: the faults fakeredis cannot produce.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    def __init__(self, workdir: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir),
             "--enable-debug-command", "local", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30  # a busy machine may be slow to fork and listen
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return
            time.sleep(0.01)  # readiness poll of an external process, not test sync
        raise RuntimeError("redis-server did not answer PING within 30 s")

    def ping(self) -> bool:
        try:
            return self.command("PING", timeout=0.2) == b"+PONG"
        except OSError:
            return False

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Send one command over a raw socket and return the first reply line."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(payload)
            return s.recv(65536).split(b"\r\n", 1)[0]

    def info(self, section: str, timeout: float = 5.0) -> dict[str, str]:
        """`INFO <section>` over a raw socket (no client handshake of its own to count)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(f"*2\r\n$4\r\nINFO\r\n${len(section)}\r\n{section}\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                data += s.recv(65536)
            header, _, body = data.partition(b"\r\n")
            size = int(header[1:])  # a bulk string: $<length>
            while len(body) < size:
                body += s.recv(65536)
        text = body[:size].decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def freeze(self, seconds: float) -> socket.socket:
        """`DEBUG SLEEP`: Redis stops answering everyone. Returns the socket to close later."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        arg = f"{seconds}"
        s.sendall(f"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${len(arg)}\r\n{arg}\r\n".encode())
        # Sent is not asleep: on a busy machine the next client's command can still be
        # answered first. Return once a PING goes unanswered.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as probe:
                probe.sendall(b"*1\r\n$4\r\nPING\r\n")
                probe.settimeout(0.25)
                try:
                    probe.recv(64)
                except TimeoutError:
                    return s  # no answer: it sleeps
            time.sleep(0.01)
        raise AssertionError("DEBUG SLEEP did not take effect")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self.kill()
