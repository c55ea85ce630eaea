"""Redis as fleets run it beyond one server, started and stopped by the tests: a Redis Cluster
of three masters, and a master watched by a Sentinel (with a replica to fail over to), all
from Debian's ``redis-server``, ``redis-sentinel`` and ``redis-cli`` (``REDIS_SERVER``,
``REDIS_SENTINEL``, ``REDIS_CLI``, else the PATH), on 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .redis_server import START_TIMEOUT, RedisServer, _free_port


class RedisClusterServers:
    """Three ``redis-server`` cluster nodes, each a master of a third of the slots."""

    def __init__(self, binary: str, cli: str, *, password: str | None = None) -> None:
        self.cli = cli
        self.password = password
        self.nodes = [
            RedisServer(
                binary,
                tcp=True,
                password=password,
                extra=("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
            )
            for _ in range(3)
        ]

    @property
    def url(self) -> str:
        """The URL of one node: a cluster client finds the others from it."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        argv = [self.cli, "--cluster", "create"]
        argv += [f"127.0.0.1:{node.port}" for node in self.nodes]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        if self.password:
            argv += ["-a", self.password, "--no-auth-warning"]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in _reply(node, "CLUSTER INFO") for node in self.nodes):
                return self
            time.sleep(0.1)
        raise RuntimeError("the cluster did not settle")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _reply(server: RedisServer, command: str) -> str:
    """The whole reply to an inline command over the node's unix socket (a bulk string's
    first line is only its length, which is all :meth:`RedisServer.command` gives)."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(5)
        connection.connect(str(server.socket))
        if server.password:
            connection.sendall(f"AUTH {server.password}\r\n".encode())
            connection.recv(1024)
        connection.sendall(f"{command}\r\n".encode())
        return connection.recv(65536).decode(errors="replace")


class RedisSentinelServers:
    """A master, a replica of it, and one Sentinel watching the master under ``name``."""

    def __init__(
        self, binary: str, sentinel: str, *, name: str = "fleet-master", password: str | None = None
    ) -> None:
        self.name = name
        self.password = password
        self.sentinel_binary = sentinel
        self.master = RedisServer(binary, tcp=True, password=password)
        self.replica = RedisServer(binary, tcp=True, password=password)
        self.directory = Path(tempfile.mkdtemp(prefix="capsolver-sentinel-"))
        self.sentinel_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """CAPSOLVER_REDIS_URL in Sentinel mode: the host is the master's name."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.name}/0"

    @property
    def sentinels(self) -> tuple[tuple[str, int], ...]:
        return (("127.0.0.1", self.sentinel_port),)

    def start(self) -> RedisSentinelServers:
        self.master.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        lines = [
            f"port {self.sentinel_port}",
            "bind 127.0.0.1",
            f"dir {self.directory}",
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1",
            f"sentinel down-after-milliseconds {self.name} 1000",
            f"sentinel failover-timeout {self.name} 5000",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {self.name} {self.password}")
        config = self.directory / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")  # Sentinel rewrites it: a file of its own
        log = (self.directory / "sentinel.log").open("ab")
        self.process = subprocess.Popen(
            [self.sentinel_binary, str(config)], stdout=log, stderr=log, cwd=self.directory
        )
        log.close()
        self._wait_for_replica()
        return self

    def _wait_for_replica(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if "master_link_status:up" in _reply(self.replica, "INFO replication"):
                return
            time.sleep(0.1)
        raise RuntimeError("the replica did not catch up with the master")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.master.stop()
        self.replica.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def tls_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA, and a certificate for ``localhost`` it signed: (ca, certificate, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "redis.crt", directory / "redis.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths
