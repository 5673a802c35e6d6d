"""Friendly failures of the `xhub` CLI: one stderr line, no traceback, a documented exit code."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_cli import add_args, member_rows

from xhub.cli.main import main
from xhub.connectors.cli import main as connector_main
from xhub.hub.core.config import load_config, unknown_env_warnings
from xhub.protocol import package_version
from xhub.protocol.divisions import reference
from xhub.storage import normalize_database_url

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _no_xhub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("XHUB_") and name != "XHUB_PG_BIN":
            monkeypatch.delenv(name)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `xhub ARGS...` in-process; SystemExit (argparse) becomes its code."""

    def invoke(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def data_dir(tmp_path: Path, run: Run) -> Path:
    root = tmp_path / "hub"
    code, _out, err = run("init", root)
    assert code == 0, err
    return root


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def one_error_line(err: str) -> str:
    """The CLI's own stderr lines (gRPC core may add its log line): exactly one, no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "xhub"))]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        (["init", "{tmp}/a", "--listen", "nohost"], 2, "is not host:port"),
        (["init", "{tmp}/a", "--listen", "127.0.0.1:99999"], 2, "is not host:port"),
        (["init", "{tmp}/a", "--listen", "0.0.0.0:7443"], 2, "no advertise address"),
        (["init", "{tmp}/a", "--listen", "[::]:7443"], 2, "no advertise address"),
        (["serve", "--data-dir", "{hub}", "--listen", "localhost"], 2, "is not host:port"),
        (["serve", "--data-dir", "{hub}", "--listen", "127.0.0.1:{busy}"], 4, "port is in use"),
        (["member", "renew", "X", "--data-dir", "{hub}", "--csr", "r", "--days", "-5"], 2, "-5"),
        (["member", "renew", "X", "--data-dir", "{hub}", "--csr", "r", "--days", "0"], 2, "1 to"),
        (
            ["member", "renew", "X", "--data-dir", "{hub}", "--csr", "r", "--days", "99999"],
            2,
            "1 to",
        ),
        (["member", "renew", "X", "--data-dir", "{hub}", "--csr", "r", "--days", "x"], 2, "whole"),
    ],
    ids=[
        "listen-no-port",
        "listen-port-range",
        "any-v4-no-advertise",
        "any-v6-no-advertise",
        "serve-bad-listen",
        "serve-port-in-use",
        "days-negative",
        "days-zero",
        "days-absurd",
        "days-not-a-number",
    ],
)
def test_mistake_is_one_line_with_its_exit_code(
    run: Run,
    data_dir: Path,
    tmp_path: Path,
    busy_port: int,
    command: list[str],
    code: int,
    message: str,
) -> None:
    argv = [a.format(tmp=tmp_path, hub=data_dir, busy=busy_port) for a in command]
    got, _out, err = run(*argv)
    assert got == code, err
    assert message in one_error_line(err)
    assert not (tmp_path / "a").exists()  # a refused init leaves nothing


@pytest.mark.parametrize("entry", [main, connector_main], ids=["xhub", "xhub-connector"])
def test_version_prints_the_installed_package_version(
    entry: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        entry(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.split()[-1] == package_version() != "unknown (not installed)"


def test_listen_on_every_interface_with_advertise_is_accepted(tmp_path: Path, run: Run) -> None:
    root = tmp_path / "hub"
    code, _out, err = run("init", root, "--listen", "0.0.0.0:7443", "--advertise", "hub.gz:7443")
    assert code == 0, err
    assert load_config(root, env={}).advertised_address == "hub.gz:7443"


def test_member_add_refuses_a_bundle_without_a_dialable_address(
    data_dir: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XHUB_LISTEN", "0.0.0.0:7443")
    code, _out, err = run(*add_args(data_dir))
    assert code == 2
    assert "set advertise" in one_error_line(err).lower()
    assert member_rows(load_config(data_dir, env={})) == {}
    assert not (data_dir / "bundles").exists() or not any((data_dir / "bundles").iterdir())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XHUB_DATABSE_URL": "x"}, ["XHUB_DATABSE_URL", "did you mean XHUB_DATABASE_URL?"]),
        ({"XHUB_LISTN": "x"}, ["XHUB_LISTN", "did you mean XHUB_LISTEN?"]),
        ({"XHUB_ZZZ": "x"}, ["XHUB_ZZZ", "is not an xhub setting"]),
        ({"XHUB_LISTEN": "x", "XHUB_DATA_DIR": "d", "OTHER": "y"}, []),
    ],
    ids=["database-url", "listen", "unknown", "all-known"],
)
def test_misspelled_environment_variable_is_named_with_the_closest(
    env: dict[str, str], expected: list[str]
) -> None:
    warnings = unknown_env_warnings(env)
    if not expected:
        assert warnings == []
        return
    assert len(warnings) == 1
    for part in expected:
        assert part in warnings[0]
    if "ZZZ" in expected[0]:
        assert "did you mean" not in warnings[0]


def test_cli_prints_the_environment_warning(
    data_dir: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XHUB_DATABSE_URL", "postgres://elsewhere/db")
    code, _out, err = run("member", "list", "--data-dir", data_dir)
    assert code == 0
    assert "warning: environment variable XHUB_DATABSE_URL" in err
    assert "XHUB_DATABASE_URL?" in err


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_postgres_urls_name_the_projects_driver(url: str, normalised: str) -> None:
    assert normalize_database_url(url) == normalised


@pytest.mark.postgres
def test_init_accepts_a_postgres_scheme_url(tmp_path: Path, run: Run, pg_url: str) -> None:
    plain = "postgres://" + pg_url.split("://", 1)[1]
    code, out, err = run("init", tmp_path / "hub", "--database-url", plain)
    assert code == 0, err
    assert "postgresql+psycopg://" in out


def test_init_on_a_database_another_hub_uses_is_refused(
    tmp_path: Path, run: Run, db_url: str
) -> None:
    code, _out, err = run("init", tmp_path / "first", "--database-url", db_url)
    assert code == 0, err
    code, _out, err = run(
        "init", tmp_path / "second", "--database-url", db_url, "--hub-id", "CN.440100.XHUB"
    )
    assert code == 2
    line = one_error_line(err)
    assert "already used by hub CN.440000.XHUB" in line
    assert "UniqueViolation" not in line and "IntegrityError" not in line
    assert not (tmp_path / "second").exists()


@pytest.mark.parametrize(
    ("division", "extra", "code", "message"),
    [
        ("440199", [], 2, "not in the GB/T 2260 reference data"),
        ("440199", ["--allow-unlisted-division"], 0, "accepted because --allow-unlisted"),
        ("440106", [], 0, ""),
    ],
    ids=["unlisted-refused", "unlisted-allowed-warns", "listed"],
)
def test_division_checked_against_the_shipped_reference(
    data_dir: Path, run: Run, division: str, extra: list[str], code: int, message: str
) -> None:
    from xhub.protocol import codes

    uscc = codes.make_uscc("1", "1", division, "MB2C9041")
    got, _out, err = run(*add_args(data_dir, **{"--division": division, "--uscc": uscc}), *extra)
    assert got == code, err
    assert message in err
    if code == 0 and not message:
        assert "warning" not in err


def test_reference_table_covers_every_level() -> None:
    table = reference()
    assert table.version == "2025"
    assert len(table.names) > 3000
    assert table.names["440000"] == "广东省"
    assert table.names["440100"] == "广州市"
    assert table.names["440106"] == "天河区"
    assert table.names["110101"] == "东城区"
    assert "440199" not in table.names
