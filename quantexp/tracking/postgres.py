"""A PostgreSQL cluster of its own, for the tracking server and shared Optuna studies.

``PostgresCluster(data_dir, port).start()`` runs Debian's ``postgresql`` binaries
(``/usr/lib/postgresql/<version>/bin``, or ``initdb`` on PATH): ``initdb`` into
``data_dir`` on first use (trust authentication, superuser ``quantexp``), then
``pg_ctl start`` listening on 127.0.0.1:``port`` only, its socket inside ``data_dir``,
so it touches no system cluster. PostgreSQL refuses to run as root: as root the
binaries run as the ``postgres`` user (``runuser``), who then owns ``data_dir``.
``database(name)`` creates a database once and returns its SQLAlchemy URL
(``postgresql+psycopg2://quantexp@127.0.0.1:PORT/name``); ``stop()`` is ``pg_ctl stop
-m fast``. ``make server-postgres`` and the tests use it; a team would point
``--backend-store-uri`` at its own managed PostgreSQL instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "quantexp"
_RUN_AS = "postgres"  # the account Debian's package creates


class PostgresUnavailable(RuntimeError):
    pass


def bin_dir() -> Path:
    """The folder of initdb/pg_ctl: Debian's newest /usr/lib/postgresql/<v>/bin, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailable("PostgreSQL is not installed (initdb not found): apt-get install postgresql")


class PostgresCluster:
    def __init__(self, data_dir: str | Path | None = None, port: int | None = None) -> None:
        from quantexp.tracking.server import free_port

        # A folder of its own under /tmp when none is given: the postgres user must be
        # able to reach it, which a pytest tmp_path (mode 700, owned by root) is not.
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="quantexp-pg-")) / "data"
        self.port = port or free_port()
        self.bin = bin_dir()
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", _RUN_AS, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
        return proc

    def start(self) -> PostgresCluster:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.data_dir.parent, _RUN_AS)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                      "--encoding=UTF8", "--no-instructions")
        options = f"-p {self.port} -h 127.0.0.1 -k {self.data_dir}"
        self._run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.log_file), "-w", "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Create database ``name`` unless it exists; its SQLAlchemy URL."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["PostgresCluster", "PostgresUnavailable", "SUPERUSER", "bin_dir"]
