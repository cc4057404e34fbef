"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, a fresh cluster in a
temporary folder on a free 127.0.0.1 port (as the `postgres` user when run as root, since
initdb refuses root); the test skips, saying why, only when the binaries are absent.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in [
        f"/usr/sbin/{name}",
        f"/usr/bin/{name}",
        *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True),
    ]:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def postgresql(tmp_path: Path) -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's postgresql (.ci/setup.d/30-postgresql.sh)"
        )
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as `postgres`
        import pwd

        # pytest's tmp_path sits under a root-only folder the postgres user cannot enter
        tmp_path = Path(tempfile.mkdtemp(prefix="mlp-pg-"))
        user = pwd.getpwnam("postgres")
        os.chown(tmp_path, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = tmp_path / "pgdata"
    sock_dir = tmp_path / "pgsock"
    subprocess.run([*prefix, "mkdir", str(sock_dir)], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "mlp", "--auth=trust", "-E", "UTF8"], check=True, capture_output=True
    )
    opts = f"-p {port} -k {sock_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(tmp_path / "pg.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://mlp@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        if prefix:
            shutil.rmtree(tmp_path, ignore_errors=True)
