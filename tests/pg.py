"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temporary directory, a server on a
free loopback port, stopped (``-m immediate``) and removed at the end.

Use the fixtures through ``tests/conftest.py``: ``postgres_url`` (session: the server's
``postgres`` database) and ``postgres_db`` (a fresh, empty database per test). On a machine
without the server binaries they fail with one line naming the package to install; they never
skip, so that CI cannot pass without having run the PostgreSQL tests.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, in /usr/local/bin or " \
               "/usr/lib/postgresql/*/bin: install them (Debian/Ubuntu: apt-get install postgresql)"


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then /usr/local/bin, then the
    newest /usr/lib/postgresql/<version>/bin (Debian keeps the server out of PATH)."""
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    candidates.append(Path("/usr/local/bin"))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in Path(p).parent.name.split(".") if x.isdigit()])
    candidates += [Path(p) for p in reversed(versions)]
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running throwaway server; ``url`` names its ``postgres`` database."""

    bin_dir: Path
    root: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.run_as, *args], capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        data, sockets = self.root / "data", self.root / "sockets"
        done = self._run(str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                         "--no-sync", "-E", "UTF8")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        # Loopback only; fsync stays on, since the durability tests kill clients, not the server.
        options = f"-p {self.port} -k {sockets} -c listen_addresses=127.0.0.1"
        done = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                         str(self.root / "server.log"), "-w", "-t", "60", "start")
        if done.returncode:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {log[-2000:]}")

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name


def start_cluster() -> Cluster:
    """Start a throwaway cluster; raises RuntimeError (one line) without the server binaries.

    As root, initdb refuses to run: the cluster then belongs to the ``postgres`` user (the Debian
    package creates it), or ``nobody`` where there is none.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(INSTALL_HINT)
    root = Path(tempfile.mkdtemp(prefix="churnml-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            user, entry = "nobody", pwd.getpwnam("nobody")
        os.chown(root, entry.pw_uid, entry.pw_gid)
        run_as = ["runuser", "-u", user, "--"]
    (root / "sockets").mkdir()
    if run_as:
        os.chown(root / "sockets", entry.pw_uid, entry.pw_gid)
    cluster = Cluster(bin_dir, root, _free_port(), run_as)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    return cluster
