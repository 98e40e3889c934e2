"""Cross-silo deployment on Flower's deployment engine: credentials, commands, and one host's processes.

Flower's SuperLink takes a TLS certificate and, with ``--enable-supernode-auth``, admits only
SuperNodes whose public key was registered with ``flwr supernode register``
(``notes/deployment-and-secagg.md``). This module writes what that needs (a CA, the SuperLink's
certificate, one SECP384R1 key pair per SuperNode in OpenSSH format, the ``flwr`` connection),
builds the exact command lines, and can start a SuperLink and N SuperNodes on one host with their
PIDs recorded, so that ``stop`` ends exactly those. ``fedlora deploy ...`` is its command line.

Layout of a deployment folder (``Credentials``): ``ca.crt`` (every host), ``ca.key`` (keep it
where the certificates are made), ``server.pem`` / ``server.key`` (SuperLink host only),
``supernodes/sn<k>`` (SuperNode k only) and ``supernodes/sn<k>.pub`` (registered from the host
that runs ``flwr``), ``flwr-home/`` (the ``flwr`` CLI's config), ``logs/`` and ``pids.json``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .protocol import DATA_PATH, NODE_WORKER, PARTITION_ID

DEFAULT_PORT = 8000  # the SuperLink's one port (Fleet, Control and Runtime APIs); the only one to open
SUPERNODE_PORT = 9094  # a SuperNode's local ClientAppIO port (loopback only; one per SuperNode on a host)
CONNECTION = "fedlora"  # the connection name in flwr-home/config.toml (`flwr run . fedlora`)
PIDS_FILE = "pids.json"
FLWR_ENV = {
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    # how often a SuperExec asks for a task to launch (a ClientApp, a ServerApp); Flower's default is 1 s
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}


@dataclass(frozen=True)
class Credentials:
    """Where a deployment folder keeps each file (see the module docstring for which host needs which)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def supernode_key(self, k: int) -> Path:
        return self.root / "supernodes" / f"sn{k}"

    def supernode_pub(self, k: int) -> Path:
        return self.root / "supernodes" / f"sn{k}.pub"

    def worker_socket(self, k: int) -> Path:
        """SuperNode k's long-lived worker (``clients.worker``) listens here (its node config ``worker``)."""
        return self.root / "workers" / f"sn{k}.sock"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)


def make_certificates(creds: Credentials, hosts: Sequence[str], days: int = 365) -> None:
    """A self-signed CA and the SuperLink's certificate for ``hosts`` (IP addresses or DNS names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("make_certificates needs at least one host name or IP address for the SuperLink")
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    pem = serialization.Encoding.PEM

    def private_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlora deployment CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    creds.root.mkdir(parents=True, exist_ok=True)
    _write_private(creds.ca_key, private_bytes(ca_key))
    creds.ca_cert.write_bytes(ca.public_bytes(pem))
    _write_private(creds.server_key, private_bytes(server_key))
    creds.server_cert.write_bytes(server.public_bytes(pem))


def make_supernode_key(creds: Credentials, k: int) -> Path:
    """SuperNode k's SECP384R1 key pair in OpenSSH format (what flower-supernode and flwr read); the private path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    ssh = serialization.Encoding.OpenSSH
    _write_private(
        creds.supernode_key(k),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    creds.supernode_pub(k).write_bytes(key.public_key().public_bytes(ssh, serialization.PublicFormat.OpenSSH))
    return creds.supernode_key(k)


def flwr_env(creds: Credentials, bin_dir: Path | None = None) -> dict[str, str]:
    """The environment of every process: Flower's binaries on PATH (the SuperLink starts its own by name)."""
    bin_dir = bin_dir or Path(sys.executable).parent
    return {**os.environ, **FLWR_ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def write_connection(creds: Credentials, address: str, name: str = CONNECTION, bin_dir: Path | None = None) -> Path:
    """The ``flwr`` CLI's connection to the SuperLink over TLS (flwr-home/config.toml); idempotent."""
    creds.flwr_home.mkdir(parents=True, exist_ok=True)
    env = {**flwr_env(creds, bin_dir), "FLWR_HOME": str(creds.flwr_home)}
    flwr = str((bin_dir or Path(sys.executable).parent) / "flwr")
    subprocess.run([flwr, "config", "list"], env=env, capture_output=True, timeout=60, check=False)  # creates it
    config = creds.flwr_home / "config.toml"
    text = config.read_text() if config.exists() else ""
    if f"[superlink.{name}]" not in text:
        section = f'\n[superlink.{name}]\naddress = "{address}"\nroot-certificates = "{creds.ca_cert.resolve()}"\n'
        config.write_text(text + section)
    return config


def superlink_argv(
    creds: Credentials, host: str = "127.0.0.1", port: int = DEFAULT_PORT, bin_dir: Path | None = None
) -> list[str]:
    """TLS + SuperNode authentication; the database keeps registered nodes across a SuperLink restart."""
    bin_dir = bin_dir or Path(sys.executable).parent
    return [
        str(bin_dir / "flower-superlink"),
        "--ssl-ca-certfile",
        str(creds.ca_cert),
        "--ssl-certfile",
        str(creds.server_cert),
        "--ssl-keyfile",
        str(creds.server_key),
        "--enable-supernode-auth",
        "--database",
        str(creds.root / "superlink.db"),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]


def node_config_text(partition_id: int, num_partitions: int, data_path: str | Path, extra: Mapping[str, Any]) -> str:
    """``--node-config``'s text: strings quoted, as Flower parses it (TOML values)."""
    items: dict[str, Any] = {
        PARTITION_ID: partition_id,
        "num-partitions": num_partitions,
        DATA_PATH: str(Path(data_path).resolve()),
        **extra,
    }
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


def supernode_argv(
    creds: Credentials,
    k: int,
    superlink: str,
    data_path: str | Path,
    num_partitions: int,
    port: int = SUPERNODE_PORT,
    extra: Mapping[str, Any] | None = None,
    bin_dir: Path | None = None,
) -> list[str]:
    """SuperNode k: its key, the CA, its data folder and partition id in its node config. Flower's SuperNode,
    started through ``fedlora.supernode_polling`` (it pulls every 0.2 s when idle, not every 3 s)."""
    python = sys.executable if bin_dir is None else str(bin_dir / "python")
    return [
        python,
        "-m",
        "fedlora.supernode_polling",
        "--superlink",
        superlink,
        "--root-certificates",
        str(creds.ca_cert),
        "--auth-supernode-private-key",
        str(creds.supernode_key(k)),
        "--port",
        str(port),
        "--node-config",
        node_config_text(k, num_partitions, data_path, extra or {}),
    ]


def worker_argv(socket: Path, python: str | None = None) -> list[str]:
    """The silo's long-lived worker: the ClientApp's bodies with the model and the data kept between rounds."""
    return [python or sys.executable, "-m", "clients.worker", str(socket)]


def start_worker(
    creds: Credentials, k: int, env: Mapping[str, str], procs: list[subprocess.Popen], timeout: float = 120.0
) -> Path:
    """SuperNode k's worker, started and listening (its socket exists); the socket's path."""
    socket = creds.worker_socket(k)
    socket.parent.mkdir(parents=True, exist_ok=True)
    proc = start(creds, f"worker{k}", worker_argv(socket), env, procs)
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if proc.poll() is not None:
            tail = (creds.logs / f"worker{k}.log").read_text()[-1500:]
            raise RuntimeError(f"the worker of SuperNode {k} exited with {proc.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker of SuperNode {k} did not listen on {socket} within {timeout:.0f} s")
        time.sleep(0.2)
    return socket


def register_supernode(creds: Credentials, k: int, name: str = CONNECTION, bin_dir: Path | None = None) -> str:
    """``flwr supernode register`` of SuperNode k's public key with the running SuperLink; its output."""
    env = {**flwr_env(creds, bin_dir), "FLWR_HOME": str(creds.flwr_home)}
    flwr = str((bin_dir or Path(sys.executable).parent) / "flwr")
    done = subprocess.run(
        [flwr, "supernode", "register", str(creds.supernode_pub(k)), name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flwr supernode register {creds.supernode_pub(k)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def start(
    creds: Credentials, name: str, argv: list[str], env: Mapping[str, str], procs: list[subprocess.Popen]
) -> subprocess.Popen:
    """One process in its own session (its group id is its PID), its output in logs/<name>.log."""
    creds.logs.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = open(creds.logs / f"{name}.log", "ab")  # the child keeps it open; this process need not
    proc = subprocess.Popen(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    procs.append(proc)
    return proc


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until something listens on ``host:port``; raises after ``timeout`` s or when ``proc`` exits."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {host}:{port}")
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def start_local(
    creds: Credentials,
    data_paths: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    supernode_ports: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
    bin_dir: Path | None = None,
    workers: bool | Sequence[bool] = False,
    superlink_env: Mapping[str, str] | None = None,
) -> list[subprocess.Popen]:
    """A SuperLink and one registered SuperNode per data folder on this host; PIDs in pids.json.

    ``workers``: give every SuperNode (or those flagged, one flag per folder) a long-lived worker
    (``clients.worker``), started first, named in its node config. Credentials are made first when
    the folder has none. ``superlink_env``: more environment for the SuperLink and the processes it starts
    (its ServerApp's). On any failure every process started here is ended before the error is raised."""
    n = len(data_paths)
    flags = [workers] * n if isinstance(workers, bool) else list(workers)
    if len(flags) != n:
        raise ValueError(f"workers: {len(flags)} flags for {n} data folders")
    if not creds.server_cert.exists():
        make_certificates(creds, [host, "localhost"] if host != "localhost" else [host])
    for k in range(n):
        if not creds.supernode_key(k).exists():
            make_supernode_key(creds, k)
    env = flwr_env(creds, bin_dir)
    address = f"{host}:{port}"
    write_connection(creds, address, bin_dir=bin_dir)
    ports = list(supernode_ports or [SUPERNODE_PORT + k for k in range(n)])
    procs: list[subprocess.Popen] = []
    try:
        link = start(
            creds,
            "superlink",
            superlink_argv(creds, host, port, bin_dir),
            {**env, **(superlink_env or {}), "FLWR_HOME": str(creds.flwr_home / "superlink")},
            procs,
        )
        wait_for_port(host, port, timeout, link)
        for k in range(n):
            register_supernode(creds, k, bin_dir=bin_dir)
        for k, data in enumerate(data_paths):
            node_extra = dict(extra or {})
            if flags[k]:
                node_extra[NODE_WORKER] = str(start_worker(creds, k, env, procs))
            argv = supernode_argv(creds, k, address, data, n, ports[k], node_extra, bin_dir)
            start(creds, f"sn{k}", argv, {**env, "FLWR_HOME": str(creds.flwr_home / f"sn{k}")}, procs)
        write_pids(creds, procs)
    except BaseException:
        stop_processes(procs)
        raise
    return procs


def write_pids(creds: Credentials, procs: Sequence[subprocess.Popen]) -> Path:
    path = creds.root / PIDS_FILE
    path.write_text(json.dumps([p.pid for p in procs]))
    return path


def stop_processes(procs: Sequence[subprocess.Popen], timeout: float = 20.0) -> None:
    """SIGTERM to each started process's group (its own session: itself and the processes it started)."""
    for p in procs:
        if p.poll() is None:
            _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def stop_recorded(creds: Credentials) -> list[int]:
    """End the process groups ``start_local`` recorded in pids.json (another shell started them); their PIDs."""
    path = creds.root / PIDS_FILE
    if not path.exists():
        return []
    pids = [int(p) for p in json.loads(path.read_text())]
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    path.unlink()
    return pids


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
