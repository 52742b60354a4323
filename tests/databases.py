"""pytest fixtures that hand out fresh databases on SQLite, PostgreSQL and MariaDB.

``database_url`` is parametrized over ``sqlite``, ``postgresql`` and ``mariadb`` (pick one with
``-k sqlite`` etc.): each test gets a database of its own, with the schema of ``lib/db.py`` and no
rows, dropped when the test ends. ``db`` is ``lib.db.connect(database_url)``.

Building the schema takes seconds on a server (``dataset`` reflects table by table), so it is built
once per session in a template database (named ``crowdsky_test_<random>_tpl``) and copied for each
test: ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL, ``CREATE TABLE ... LIKE`` on MariaDB, a file
copy on SQLite.

Servers: ``CROWDSKY_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
and ``CROWDSKY_TEST_MARIADB_URL`` (default ``mysql://root@127.0.0.1:3306/test``); the user needs
the right to create databases. A server that cannot be reached fails the test with instructions,
unless ``CROWDSKY_TEST_SKIP_SERVERS=1``, which skips it instead.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import psycopg
import pymysql
import pytest
import sqlalchemy.exc
from sqlalchemy.engine import make_url

import lib.db

BACKENDS = ("sqlite", "postgresql", "mariadb")
DEFAULT_URLS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql://root@127.0.0.1:3306/test",
}
HOW_TO_START = (
    "Start the test database servers with `infra/test-databases.sh` (run as root: it installs "
    "PostgreSQL and MariaDB from Debian packages if missing), or point CROWDSKY_TEST_POSTGRES_URL / "
    "CROWDSKY_TEST_MARIADB_URL at running servers. To skip these tests instead, set "
    "CROWDSKY_TEST_SKIP_SERVERS=1."
)


class _Postgres:
    def __init__(self, server_url: str, prefix: str):
        self.server_url = make_url(server_url)
        self.admin = psycopg.connect(self._conninfo(self.server_url.database), autocommit=True,
                                     connect_timeout=5)
        self.template = f"{prefix}_tpl"
        self.admin.execute(f'CREATE DATABASE "{self.template}"')
        lib.db.connect(self.url(self.template)).close()   # close: a template must have no sessions

    def _conninfo(self, database: str | None) -> str:
        url = self.server_url.set(drivername="postgresql", database=database)
        return url.render_as_string(hide_password=False)

    def url(self, database: str) -> str:
        return self.server_url.set(database=database).render_as_string(hide_password=False)

    def create(self, name: str) -> None:
        self.admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')

    def drop(self, name: str) -> None:
        # FORCE: a test may leave a connection open (or idle in a transaction holding locks).
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.drop(self.template)
        self.admin.close()


class _MariaDB:
    def __init__(self, server_url: str, prefix: str):
        self.server_url = make_url(server_url)
        u = self.server_url
        self.admin = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306,
                                     user=u.username or "root", password=u.password or "",
                                     autocommit=True, connect_timeout=5)
        self._sql("SET SESSION lock_wait_timeout = 20")      # fail, don't hang, on a stuck drop
        self.template = f"{prefix}_tpl"
        self._sql(f"CREATE DATABASE `{self.template}`")
        lib.db.connect(self.url(self.template)).close()
        self.tables = [row[0] for row in self._sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            self.template)]

    def _sql(self, statement: str, *args) -> tuple:
        with self.admin.cursor() as cursor:
            cursor.execute(statement, args or None)
            return cursor.fetchall()

    def url(self, database: str) -> str:
        return self.server_url.set(database=database).render_as_string(hide_password=False)

    def create(self, name: str) -> None:
        self._sql(f"CREATE DATABASE `{name}`")
        for table in self.tables:
            self._sql(f"CREATE TABLE `{name}`.`{table}` LIKE `{self.template}`.`{table}`")

    def drop(self, name: str) -> None:
        # A test may leave a connection idle in a transaction; its locks would block the DROP.
        for (conn_id,) in self._sql(
                "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                name):
            try:
                self._sql(f"KILL {int(conn_id)}")
            except pymysql.err.OperationalError:
                pass                                         # it ended by itself meanwhile
        self._sql(f"DROP DATABASE IF EXISTS `{name}`")

    def close(self) -> None:
        self.drop(self.template)
        self.admin.close()


class _SQLite:
    def __init__(self, folder: Path):
        self.template = folder / "template.db"
        lib.db.connect(f"sqlite:///{self.template}").close()   # closing checkpoints the WAL

    def copy_to(self, path: Path) -> str:
        shutil.copyfile(self.template, path)
        return f"sqlite:///{path}"

    def close(self) -> None:
        pass


class _Servers:
    """The session's template databases, made on first use; a failure is remembered."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory):
        self.tmp_path_factory = tmp_path_factory
        self.prefix = f"crowdsky_test_{secrets.token_hex(4)}"
        self.backends: dict[str, object] = {}
        self.errors: dict[str, str] = {}
        self.count = 0

    def get(self, backend: str):
        if backend not in self.backends and backend not in self.errors:
            if backend == "sqlite":
                self.backends[backend] = _SQLite(self.tmp_path_factory.mktemp("sqlite-template"))
            else:
                env = "CROWDSKY_TEST_POSTGRES_URL" if backend == "postgresql" else "CROWDSKY_TEST_MARIADB_URL"
                url = os.environ.get(env) or DEFAULT_URLS[backend]
                kind = _Postgres if backend == "postgresql" else _MariaDB
                try:
                    self.backends[backend] = kind(url, self.prefix)
                except (psycopg.Error, pymysql.err.MySQLError, sqlalchemy.exc.DBAPIError) as exc:
                    safe = make_url(url).render_as_string(hide_password=True)
                    reason = " ".join(str(exc).split())
                    self.errors[backend] = (f"{backend} test server at {safe} ({env}) is not usable: "
                                            f"{reason}\n{HOW_TO_START}")
        if backend in self.errors:
            self._unavailable(self.errors[backend])
        return self.backends[backend]

    def next_name(self) -> str:
        self.count += 1
        return f"{self.prefix}_{self.count}"

    @staticmethod
    def _unavailable(message: str):
        if os.environ.get("CROWDSKY_TEST_SKIP_SERVERS") == "1":
            pytest.skip(message.splitlines()[0] + " (CROWDSKY_TEST_SKIP_SERVERS=1)")
        pytest.fail(message, pytrace=False)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()


@pytest.fixture(scope="session")
def _database_servers(tmp_path_factory):
    servers = _Servers(tmp_path_factory)
    yield servers
    servers.close()


@pytest.fixture(params=BACKENDS)
def database_url(request, _database_servers, tmp_path) -> str:
    """URL of a fresh database (schema, no rows) for this test alone, on each backend in turn."""
    backend = _database_servers.get(request.param)
    if request.param == "sqlite":
        return backend.copy_to(tmp_path / "crowdsky.db")
    name = _database_servers.next_name()
    backend.create(name)
    request.addfinalizer(lambda: backend.drop(name))
    return backend.url(name)


@pytest.fixture
def db(database_url):
    """``lib.db.connect(database_url)``, closed after the test."""
    database = lib.db.connect(database_url)
    yield database
    database.close()
