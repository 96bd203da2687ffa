"""A real PostgreSQL server for the tests: Debian's binaries, `initdb` in a temporary folder,
listening on a free loopback port and a unix socket in that folder.

PostgreSQL refuses to run as root, so when the tests run as root (CI does) the server runs as the
unprivileged system user `mlc-pg`, created with useradd when missing. The superuser `mlc` gets a
random password (scram-sha-256): the tests pass it in PGPASSWORD, as users are told to.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers import free_port

SERVER_USER = "mlc-pg"
SUPERUSER = "mlc"


def find_bin(name: str) -> str | None:
    """`name` on PATH, else the newest Debian PostgreSQL's (they live in /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return shutil.which(name) or (found[-1] if found else None)


def missing() -> str | None:
    """Why no server can be started here, or None."""
    gone = [b for b in ("initdb", "pg_ctl", "postgres") if not find_bin(b)]
    if gone:
        return (f"PostgreSQL binaries missing ({', '.join(gone)}): scripts/test.sh installs Debian's "
                f"postgresql package (apt-get install postgresql)")
    return None


class PostgresServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mlc-pg-"))
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str) -> None:
        if self.as_root:
            cmd = ("runuser", "-u", SERVER_USER, "--", *cmd)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode:
            log = (self.dir / "server.log").read_text() if (self.dir / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr or res.stdout}\n{log}")

    def start(self) -> "PostgresServer":
        (self.dir / "sock").mkdir()
        (self.dir / "pw").write_text(self.password + "\n")
        if self.as_root:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                SERVER_USER], check=True, capture_output=True)
            shutil.chown(self.dir, SERVER_USER)
            for p in self.dir.rglob("*"):
                shutil.chown(p, SERVER_USER)
        self._run(find_bin("initdb"), "-D", str(self.dir / "data"), "-U", SUPERUSER, "--auth=scram-sha-256",
                  f"--pwfile={self.dir / 'pw'}", "--no-sync", "-E", "UTF8", "--locale=C")
        (self.dir / "pw").unlink()
        opts = (f"-p {self.port} -h 127.0.0.1 -k {self.dir / 'sock'} -c fsync=off -c synchronous_commit=off "
                f"-c full_page_writes=off -c max_connections=50")
        self._run(find_bin("pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "-o", opts, "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str, icu_locale: str | None = None) -> str:
        """A new database; with `icu_locale` (such as "en-US"), one whose text sorts by that locale, as
        on servers initialised with a language's locale (the test server's own is C: code points)."""
        import psycopg
        collation = f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else ""
        with psycopg.connect(self.url(), password=self.password, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{collation}')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(find_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
