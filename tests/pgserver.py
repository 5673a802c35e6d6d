"""A throwaway PostgreSQL server for the test session.

The harness runs ``initdb`` into a fresh temporary directory, starts ``postgres`` on a free
TCP port bound to 127.0.0.1 (plus a private Unix socket directory), and hands out SQLAlchemy
URLs for fresh databases.  Durability is switched off (``fsync=off`` and friends): the cluster
is deleted when the session ends, so nothing written to it needs to survive a crash.

PostgreSQL refuses to run as root.  When the tests run as root, every server process is started
as the ``postgres`` OS user and the temporary directory (created directly under ``/tmp``, which
that user can traverse) is handed over to it.

Binaries are found by :func:`find_pg_bin`: ``$XHUB_PG_BIN`` if set, else the newest
``/usr/lib/postgresql/<version>/bin``, else ``pg_config --bindir``, else ``initdb`` on ``PATH``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psycopg
from psycopg import sql

__all__ = ["PG_BIN_ENV", "PgServer", "PgServerError", "find_pg_bin"]

PG_BIN_ENV = "XHUB_PG_BIN"
"""Environment variable naming a directory that holds ``initdb`` and ``postgres``."""

_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
_OS_USER_WHEN_ROOT = "postgres"
_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SERVER_SETTINGS = (
    "listen_addresses=127.0.0.1",
    # Throwaway cluster: trade durability for speed.
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=100",
)


class PgServerError(RuntimeError):
    """The test PostgreSQL server could not be set up, started or used."""


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres"))


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name  # /usr/lib/postgresql/<version>/bin
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def find_pg_bin() -> Path | None:
    """Return the directory holding the PostgreSQL server binaries, or ``None``.

    ``$XHUB_PG_BIN`` wins when set (and yields ``None`` if it lacks the binaries, so a bogus
    value is never silently replaced by a system install).
    """
    override = os.environ.get(PG_BIN_ENV)
    if override:
        path = Path(override)
        return path if _has_server_binaries(path) else None

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if _has_server_binaries(Path(candidate)):
            return Path(candidate)

    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out and _has_server_binaries(Path(out)):
                return Path(out)

    initdb = shutil.which("initdb")
    if initdb:
        bindir = Path(initdb).resolve().parent
        if _has_server_binaries(bindir):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no server log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class PgServer:
    """One PostgreSQL cluster in a temporary directory, alive until :meth:`stop`.

    Usage::

        server = PgServer().start()
        url = server.create_database("my_test_db")  # postgresql+psycopg://postgres@...
        ...
        server.stop()

    or as a context manager (``with PgServer() as server: ...``).
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        dbname: str = "xhub",
        startup_timeout: float = 30.0,
    ) -> None:
        found = bin_dir if bin_dir is not None else find_pg_bin()
        if found is None or not _has_server_binaries(found):
            where = found if found is not None else f"${PG_BIN_ENV}, /usr/lib/postgresql/*/bin"
            raise PgServerError(f"PostgreSQL server binaries (initdb, postgres) not found: {where}")
        _check_db_name(dbname)
        self.bin_dir: Path = found
        self.dbname: str = dbname
        self.startup_timeout: float = startup_timeout
        self.port: int = 0
        self.base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._run_as: tuple[int, int] | None = None

    # -- paths -----------------------------------------------------------------------------

    def _base(self) -> Path:
        if self.base_dir is None:
            raise PgServerError("the PostgreSQL test server has not been started")
        return self.base_dir

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "sock"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgres.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PgServer:
        """initdb, start the postmaster, wait for it, create the default database."""
        if self._proc is not None:
            raise PgServerError("the PostgreSQL test server is already started")
        try:
            self._make_base_dir()
            self._initdb()
            self._launch()
            self.create_database(self.dbname)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), wait, and delete the temporary directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _shutdown(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        base, self.base_dir = self.base_dir, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------

    def url(self, dbname: str | None = None) -> str:
        """SQLAlchemy URL of ``dbname`` (default: the database created at start-up)."""
        db = self.dbname if dbname is None else dbname
        return f"postgresql+psycopg://{_SUPERUSER}@{_HOST}:{self.port}/{db}"

    def conninfo(self, dbname: str | None = None) -> str:
        """libpq connection string (for psycopg) of ``dbname``."""
        db = self.dbname if dbname is None else dbname
        return f"host={_HOST} port={self.port} user={_SUPERUSER} dbname={db} connect_timeout=5"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database and return its SQLAlchemy URL.

        ``name`` must be a plain lower-case identifier; a unique one is made when omitted.
        """
        db = name if name is not None else f"t_{uuid.uuid4().hex}"
        _check_db_name(db)
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        return self.url(db)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, terminating any sessions still connected to it."""
        _check_db_name(name)
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _admin(self, statement: sql.Composed) -> None:
        if not self.running:
            raise PgServerError("the PostgreSQL test server is not running")
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(statement)

    # -- internals -------------------------------------------------------------------------

    def _make_base_dir(self) -> None:
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(_OS_USER_WHEN_ROOT)
            except KeyError:
                raise PgServerError(
                    "running as root, but there is no 'postgres' OS user to run the server as"
                ) from None
            self._run_as = (user.pw_uid, user.pw_gid)
        # Directly under /tmp (world-traversable) rather than $TMPDIR, which may sit below a
        # directory the postgres user cannot enter; short, too, for the Unix socket path.
        parent = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
        base = Path(tempfile.mkdtemp(prefix="xhub-pg-", dir=parent))
        self.base_dir = base
        base.chmod(0o700)
        (base / "sock").mkdir(mode=0o700)
        if self._run_as is not None:
            uid, gid = self._run_as
            for path in (base, base / "sock"):
                os.chown(path, uid, gid)

    def _child_kwargs(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {"cwd": self._base(), "env": env}
        if self._run_as is not None:
            uid, gid = self._run_as
            env["HOME"] = str(self._base())
            env["USER"] = env["LOGNAME"] = _OS_USER_WHEN_ROOT
            kwargs.update(user=uid, group=gid, extra_groups=[])
        return kwargs

    def _initdb(self) -> None:
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        try:
            result = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=180,
                check=False,
                **self._child_kwargs(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PgServerError(f"initdb could not run: {exc}") from exc
        if result.returncode != 0:
            output = result.stdout.decode("utf-8", errors="replace").strip()
            raise PgServerError(f"initdb failed (exit {result.returncode}):\n{output}")

    def _launch(self) -> None:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        if self._run_as is not None:
            os.chown(self.log_path, *self._run_as)
        last_error: PgServerError | None = None
        for _attempt in range(3):
            self.port = _free_port()
            cmd = [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-k",
                str(self.socket_dir),
            ]
            for setting in _SERVER_SETTINGS:
                cmd += ["-c", setting]
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a terminal Ctrl-C must not stop it mid-run
                    **self._child_kwargs(),
                )
            except OSError as exc:
                raise PgServerError(f"postgres could not be started: {exc}") from exc
            try:
                self._wait_ready()
                return
            except PgServerError as exc:
                proc, self._proc = self._proc, None
                if proc is not None:
                    _shutdown(proc)
                last_error = exc
                if "already in use" not in _tail(self.log_path):
                    break  # not a port race: retrying will not help
        assert last_error is not None
        raise last_error

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise PgServerError(
                    f"postgres exited with code {code} during start-up; server log tail:\n"
                    f"{_tail(self.log_path)}"
                )
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last_exc = exc
            time.sleep(0.1)
        raise PgServerError(
            f"postgres did not accept connections on {_HOST}:{self.port} within "
            f"{self.startup_timeout:.0f}s (last error: {last_exc}); server log tail:\n"
            f"{_tail(self.log_path)}"
        )


def _check_db_name(name: str) -> None:
    if not _DB_NAME_RE.fullmatch(name):
        raise ValueError(f"not a plain lower-case database name (max 63 chars): {name!r}")


def _shutdown(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (fast shutdown), then SIGQUIT (immediate), then SIGKILL, waiting after each."""
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
