"""A real ``redis-server`` for the fleet tests and benchmarks, started and stopped by them.

It listens on a unix socket in a directory of its own (no port to race for, and the same
address after a restart) and, when asked, on a TCP port too. The binary is ``REDIS_SERVER``
(a path), else ``redis-server`` on the PATH; ``scripts/test.sh`` installs Debian's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 10.0


def redis_binary(name: str = "redis-server") -> str | None:
    """The ``redis-server`` (or ``redis-sentinel``, ``redis-cli``) to run, or None when this
    machine has none: ``REDIS_SERVER`` (``REDIS_SENTINEL``, ``REDIS_CLI``), else the PATH."""
    configured = os.environ.get(name.upper().replace("-", "_"))
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which(name)


class RedisServer:
    """One ``redis-server`` process: :meth:`start`, :meth:`kill` (SIGKILL, as a crash
    would), :meth:`start` again at the same address, :meth:`stop`."""

    def __init__(
        self,
        binary: str,
        *,
        tcp: bool = False,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.password = password
        #: More arguments for redis-server (a cluster node's, a replica's).
        self.extra = extra
        #: (certificate, key): the TCP port speaks TLS only (``rediss://``).
        self.tls = tls
        self.directory = Path(tempfile.mkdtemp(prefix="capsolver-redis-"))
        self.socket = self.directory / "redis.sock"
        self.port = _free_port() if tcp else 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def url(self) -> str:
        """The TCP URL when there is a port, else the unix one."""
        if self.tls:
            return f"rediss://localhost:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0" if self.port else self.unix_url

    def start(self) -> RedisServer:
        for _ in range(5):
            argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            if self.tls:
                argv = [self.binary, "--port", "0", "--tls-port", str(self.port)]
                argv += ["--bind", "127.0.0.1", "--tls-auth-clients", "no"]
                argv += ["--tls-cert-file", str(self.tls[0]), "--tls-key-file", str(self.tls[1])]
            argv += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
            if self.password:
                argv += ["--requirepass", self.password, "--masterauth", self.password]
            argv += list(self.extra)
            log = (self.directory / "redis.log").open("ab")
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, cwd=self.directory)
            log.close()
            if self._wait_ready():
                return self
            # The port was taken between choosing and binding it: choose another.
            self.process.wait()
            if self.port:
                self.port = _free_port()
        raise RuntimeError(f"redis-server did not start: see {self.directory / 'redis.log'}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self.command("PING") == "+PONG":
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def command(self, *args: str) -> str:
        """One command over the unix socket, its reply's first line (tests' own checks)."""
        with socket.socket(socket.AF_UNIX) as connection:
            connection.settimeout(5)
            connection.connect(str(self.socket))
            if self.password:
                connection.sendall(_command("AUTH", self.password))
                connection.recv(1024)
            connection.sendall(_command(*args))
            return connection.recv(65536).decode(errors="replace").split("\r\n")[0]

    def kill(self) -> None:
        """Stop at once, as a crash would (SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.socket.unlink(missing_ok=True)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def _command(*args: str) -> bytes:
    encoded = [arg.encode() for arg in args]
    return f"*{len(args)}\r\n".encode() + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in encoded
    )


def _free_port() -> int:
    # redis-server cannot bind port 0 and say which it got: take a free one and retry in
    # start() should another process take it first.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
