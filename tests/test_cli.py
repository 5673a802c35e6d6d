"""The `xhub` command line, run in-process: init, member add/list/revoke, config loading."""

from __future__ import annotations

import hashlib
import itertools
import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from xhub.cli.main import main
from xhub.connectors.cli import main as connector_main
from xhub.hub.core.config import ConfigError, HubConfig, load_config
from xhub.hub.core.db import MemberRow, current_revision, make_engine, session_factory, table_names
from xhub.hub.registry.store import REVOKED
from xhub.protocol import codes
from xhub.protocol.bundle import MemberBundle, PublicBundle

HUB_ID = "CN.440000.XHUB"
LEGACY_PILOT = "91350100M0001TGQXM"
GZ_SAMR = codes.make_uscc("1", "1", "440100", "MB2C9041")
LIWAN = codes.make_uscc("1", "2", "440103", "0A7K3QX1")
BAD_CHECK = GZ_SAMR[:-1] + ("0" if GZ_SAMR[-1] != "0" else "1")
REGISTRY_TABLES = {"members", "member_roles", "member_keys", "member_certificates", "seen_messages"}
KEY_FILES = {"tls.key", "signing.key"}


@pytest.fixture(autouse=True)
def _no_xhub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads XHUB_* overrides from the environment: start from none."""
    import os

    for name in list(os.environ):
        if name.startswith("XHUB_") and name != "XHUB_PG_BIN":
            monkeypatch.delenv(name)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `xhub ARGS...` in-process; return (exit code, stdout, stderr)."""

    def invoke(*args: Any) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def data_dir(tmp_path: Path, run: Run) -> Path:
    root = tmp_path / "hub"
    code, _out, err = run("init", root)
    assert code == 0, err
    return root


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root: mode and content hash."""
    return {
        str(p.relative_to(root)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def member_rows(config: HubConfig) -> dict[str, MemberRow]:
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(select(MemberRow).where(MemberRow.uscc != ""))
            return {row.member_id: row for row in rows}
    finally:
        engine.dispose()


def keygen(keys_dir: Path, member_id: str, signing_alg: str = "ecdsa-p256") -> Path:
    """The member's side: `xhub-connector keygen`; returns its enrolment request."""
    code = connector_main(
        ["keygen", "--member-id", member_id, "--out", str(keys_dir), "--signing-alg", signing_alg]
    )
    assert code == 0
    return keys_dir / "enrolment.req"


_requests = itertools.count()


def add_args(data_dir: Path, **overrides: str) -> list[str]:
    """`xhub member add` for the member the flags name, with a request its side just made
    (in a directory beside the hub's, one per call)."""
    values = {
        "--name": "广州市市场监督管理局",
        "--uscc": GZ_SAMR,
        "--division": "440100",
        "--roles": "issuer",
    } | overrides
    signing_alg = values.pop("--signing-alg", "ecdsa-p256")
    member_id = f"CN.{values['--division'][:6]}.{values['--uscc'].upper()}" + (
        f".{values['--subsystem']}" if values.get("--subsystem") else ""
    )
    keys_dir = data_dir.parent / "members" / f"{next(_requests)}"
    values["--csr"] = str(keygen(keys_dir, member_id, signing_alg))
    args = ["member", "add", "--data-dir", str(data_dir)]
    for flag, value in values.items():
        if value is not None:
            args += [flag, value]
    return args


# --------------------------------------------------------------------------- init


def test_init_creates_a_complete_data_dir(tmp_path: Path, run: Run):
    root = tmp_path / "new" / "hub"
    code, out, err = run("init", root, "--listen", "127.0.0.1:9443", "--hub-id", HUB_ID)
    assert code == 0, err
    assert f"initialised hub {HUB_ID}" in out
    for relative in (
        "xhub.toml",
        "xhub.db",
        "ca/ca.pem",
        "ca/ca.key",
        "hub/tls.pem",
        "hub/tls.key",
        "hub/signing.pem",
        "hub/signing.key",
        "hub/log.key",
    ):
        assert (root / relative).is_file(), relative
    for key in ("ca/ca.key", "hub/tls.key", "hub/signing.key", "hub/log.key"):
        assert stat.S_IMODE((root / key).stat().st_mode) == 0o600, key
    config = load_config(root, env={})
    assert config.hub_id == HUB_ID
    assert config.listen == "127.0.0.1:9443"
    engine = make_engine(config.effective_database_url)
    try:
        assert table_names(engine) >= REGISTRY_TABLES
        assert current_revision(engine) is not None
    finally:
        engine.dispose()
    assert member_rows(config) == {}  # the hub's own identity row is not a member


def test_init_twice_fails_and_leaves_the_dir_untouched(data_dir: Path, run: Run):
    before = snapshot(data_dir)
    code, _out, err = run("init", data_dir, "--name", "另一个平台")
    assert code == 2
    assert err.startswith("error:")
    assert "already holds a hub" in err
    assert snapshot(data_dir) == before


def test_init_into_an_existing_dir_keeps_foreign_files(tmp_path: Path, run: Run):
    root = tmp_path / "existing"
    root.mkdir()
    (root / "README.txt").write_text("operator notes", "utf-8")
    code, _out, err = run("init", root)
    assert code == 0, err
    assert (root / "README.txt").read_text("utf-8") == "operator notes"


@pytest.mark.parametrize(
    "database_url",
    ["postgresql+psycopg://nobody@127.0.0.1:1/nodb", "nosuchdialect://x/y"],
    ids=["unreachable", "unknown-dialect"],
)
def test_init_with_unusable_database_fails_cleanly(tmp_path: Path, run: Run, database_url: str):
    """A bad --database-url is bad input: exit 2 with a message, and no data dir left."""
    root = tmp_path / "hub"
    code, _out, err = run("init", root, "--database-url", database_url)
    assert code == 2
    assert err.startswith("error:")
    assert not root.exists()


# --------------------------------------------------------------------------- member add


PUBLIC_FILES = {"member.json", "tls.pem", "ca.pem", "hub-signing.pem"}


@pytest.mark.parametrize(
    ("overrides", "member_id"),
    [
        ({}, f"CN.440100.{GZ_SAMR}"),
        (
            {"--uscc": LIWAN.lower(), "--division": "440103000000", "--subsystem": "approval"},
            f"CN.440103.{LIWAN}.approval",
        ),
        ({"--signing-alg": "ed25519", "--roles": "department,issuer"}, f"CN.440100.{GZ_SAMR}"),
    ],
    ids=["ecdsa", "normalised-codes-subsystem", "ed25519"],
)
def test_member_add_writes_a_public_bundle(
    data_dir: Path, run: Run, overrides: dict[str, str], member_id: str
):
    args = add_args(data_dir, **overrides)
    keys_dir = Path(args[args.index("--csr") + 1]).parent
    for name in KEY_FILES:  # the member's side made its keys, private to its owner
        assert stat.S_IMODE((keys_dir / name).stat().st_mode) == 0o600, name
    code, out, err = run(*args)
    assert code == 0, err
    assert err == ""
    assert f"added {member_id}" in out
    bundle_dir = data_dir / "bundles" / member_id
    assert f"public bundle (no private key): {bundle_dir}" in out
    assert {p.name for p in bundle_dir.iterdir()} == PUBLIC_FILES
    secrets = [(keys_dir / name).read_bytes() for name in KEY_FILES]
    held = [
        p for p in data_dir.rglob("*") if p.is_file() and any(k in p.read_bytes() for k in secrets)
    ]
    assert held == [], "the hub's data directory holds a member private key"
    manifest = json.loads((bundle_dir / "member.json").read_text("utf-8"))
    assert manifest["member_id"] == member_id
    assert manifest["hub_id"] == HUB_ID
    # the member installs it next to its keys
    assert connector_main(["bundle", "install", str(bundle_dir), "--keys", str(keys_dir)]) == 0
    bundle = MemberBundle.load(keys_dir)
    assert bundle.member_id == member_id
    assert manifest["signing_key_id"] == bundle.signer.key_id
    assert f"signing key id: {bundle.signer.key_id}" in out
    rows = member_rows(load_config(data_dir, env={}))
    assert list(rows) == [member_id]
    assert rows[member_id].legacy_uscc == 0


def test_member_add_with_out_dir(data_dir: Path, tmp_path: Path, run: Run):
    out_dir = tmp_path / "elsewhere" / "bundle"
    code, _out, err = run(*add_args(data_dir), "--out", out_dir)
    assert code == 0, err
    assert PublicBundle.load(out_dir).member_id == f"CN.440100.{GZ_SAMR}"
    assert not (data_dir / "bundles").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"--uscc": BAD_CHECK}, "check character"),
        ({"--uscc": LEGACY_PILOT, "--division": "350100"}, "check character"),
        ({"--uscc": "91440100MB2C904"}, "18 characters"),
        ({"--division": "990000"}, "province prefix"),
        ({"--division": "4401"}, "6 digits"),
        ({"--roles": "mayor"}, "unknown role"),
        ({"--roles": ","}, "at least one role"),
        ({"--subsystem": "Bad_Name"}, "subsystem"),
        ({"--name": " "}, "name"),
    ],
    ids=[
        "uscc-check",
        "legacy-without-flag",
        "uscc-length",
        "division-province",
        "division-format",
        "unknown-role",
        "no-role",
        "bad-subsystem",
        "blank-name",
    ],
)
def test_member_add_refuses_bad_input_and_writes_nothing(
    data_dir: Path, run: Run, overrides: dict[str, str], message: str
):
    before = snapshot(data_dir)
    code, out, err = run(*add_args(data_dir, **overrides))
    assert code == 2
    assert out == ""
    assert err.startswith("error:")
    assert message in err
    assert member_rows(load_config(data_dir, env={})) == {}
    assert not (data_dir / "bundles").exists()
    after = snapshot(data_dir)
    # nothing but the SQLite files may have changed
    assert {k: v for k, v in after.items() if not k.startswith("xhub.db")} == {
        k: v for k, v in before.items() if not k.startswith("xhub.db")
    }


def test_member_add_legacy_uscc_with_override_warns(data_dir: Path, run: Run):
    code, out, err = run(
        *add_args(data_dir, **{"--uscc": LEGACY_PILOT, "--division": "350100"}),
        "--allow-legacy-uscc",
    )
    assert code == 0, err
    assert err.startswith("warning:")
    assert "legacy" in err
    member_id = f"CN.350100.{LEGACY_PILOT}"
    assert f"added {member_id}" in out
    rows = member_rows(load_config(data_dir, env={}))
    assert rows[member_id].legacy_uscc == 1


def test_member_add_twice_is_refused_and_first_bundle_intact(
    data_dir: Path, tmp_path: Path, run: Run
):
    assert run(*add_args(data_dir))[0] == 0
    member_id = f"CN.440100.{GZ_SAMR}"
    bundle_dir = data_dir / "bundles" / member_id
    before = snapshot(bundle_dir)
    row_before = member_rows(load_config(data_dir, env={}))[member_id]

    code, _out, err = run(*add_args(data_dir, **{"--name": "冒名单位"}))
    assert code == 2
    assert err.startswith("error:")
    other = tmp_path / "other-bundle"
    code, _out, err = run(*add_args(data_dir, **{"--name": "冒名单位"}), "--out", other)
    assert code == 2
    assert "already exists" in err
    assert not other.exists()

    assert snapshot(bundle_dir) == before
    row_after = member_rows(load_config(data_dir, env={}))[member_id]
    assert row_after.name == "广州市市场监督管理局"
    assert row_after.certificate_der == row_before.certificate_der


def test_member_commands_need_a_data_dir(tmp_path: Path, run: Run):
    missing = tmp_path / "nowhere"
    for args in (
        add_args(missing),
        ["member", "list", "--data-dir", missing],
        ["member", "revoke", "--data-dir", missing, "CN.X", "--reason", "x"],
    ):
        code, _out, err = run(*args)
        assert code == 2
        assert "not a hub data directory" in err
    assert not missing.exists()


# --------------------------------------------------------------------------- list / revoke


@pytest.fixture
def two_members(data_dir: Path, run: Run) -> dict[str, str]:
    members = {
        "city": (f"CN.440100.{GZ_SAMR}", add_args(data_dir)),
        "liwan": (
            f"CN.440103.{LIWAN}",
            add_args(
                data_dir,
                **{
                    "--name": "荔湾区行政审批局",
                    "--uscc": LIWAN,
                    "--division": "440103",
                    "--roles": "department,issuer",
                },
            ),
        ),
    }
    for _member_id, args in members.values():
        code, _out, err = run(*args)
        assert code == 0, err
    return {key: member_id for key, (member_id, _args) in members.items()}


def test_member_list_shows_members(data_dir: Path, run: Run, two_members: dict[str, str]):
    code, out, err = run("member", "list", "--data-dir", data_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == "2 member(s)"
    city = next(line for line in lines if two_members["city"] in line)
    liwan = next(line for line in lines if two_members["liwan"] in line)
    assert "广州市市场监督管理局" in city and "municipal" in city and "issuer" in city
    assert "荔湾区行政审批局" in liwan and "district" in liwan
    assert "issuer,department" in liwan
    assert "active" in city and "active" in liwan
    assert HUB_ID not in out


def test_member_revoke_needs_a_reason(
    data_dir: Path, run: Run, two_members: dict[str, str], capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as info:
        run("member", "revoke", "--data-dir", data_dir, two_members["city"])
    assert info.value.code == 2
    assert "--reason" in capsys.readouterr().err
    rows = member_rows(load_config(data_dir, env={}))
    assert rows[two_members["city"]].status != REVOKED


def test_member_revoke_then_list(data_dir: Path, run: Run, two_members: dict[str, str]):
    city = two_members["city"]
    code, out, err = run("member", "revoke", "--data-dir", data_dir, city, "--reason", "机构撤并")
    assert code == 0, err
    assert f"revoked {city}: 机构撤并" in out

    code, out, _err = run("member", "list", "--data-dir", data_dir)
    assert code == 0
    assert city not in out
    assert two_members["liwan"] in out
    assert out.splitlines()[-1] == "1 member(s)"

    code, out, _err = run("member", "list", "--data-dir", data_dir, "--all")
    assert code == 0
    city_line = next(line for line in out.splitlines() if city in line)
    assert "revoked" in city_line
    assert out.splitlines()[-1] == "2 member(s)"

    row = member_rows(load_config(data_dir, env={}))[city]
    assert row.status == REVOKED
    assert row.revoke_reason == "机构撤并"
    assert row.revoked_at is not None


def test_member_revoke_unknown_member(data_dir: Path, run: Run):
    code, out, err = run(
        "member", "revoke", "--data-dir", data_dir, "CN.440100.NOSUCH", "--reason", "x"
    )
    assert code == 2
    assert out == ""
    assert "no member" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["member"],
        ["member", "frobnicate"],
        ["member", "add", "--name", "x"],
        ["member", "add", "--data-dir", "d", "--name", "x", "--uscc", "u", "--division", "1"],
        ["init"],
    ],
    ids=[
        "nothing",
        "member-no-sub",
        "member-bad-sub",
        "add-missing",
        "add-no-roles",
        "init-no-dir",
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# --------------------------------------------------------------------------- configuration


def test_load_config_reads_what_init_wrote(data_dir: Path):
    config = load_config(data_dir, env={})
    assert config.data_dir == data_dir
    assert config.hub_id == HUB_ID
    assert config.listen == "127.0.0.1:7443"
    assert config.clock_skew_seconds == 300
    assert config.database_url == ""
    assert config.effective_database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XHUB_LISTEN": "0.0.0.0:9443"}, {"listen": "0.0.0.0:9443"}),
        ({"XHUB_CLOCK_SKEW_SECONDS": "60"}, {"clock_skew_seconds": 60}),
        (
            {"XHUB_LISTEN": "[::]:7443", "XHUB_CLOCK_SKEW_SECONDS": " 120 "},
            {"listen": "[::]:7443", "clock_skew_seconds": 120},
        ),
        ({"XHUB_SHUTDOWN_GRACE_SECONDS": "2.5"}, {"shutdown_grace_seconds": 2.5}),
        (
            {"XHUB_DATABASE_URL": "postgresql+psycopg://u@db/xhub"},
            {
                "database_url": "postgresql+psycopg://u@db/xhub",
                "effective_database_url": "postgresql+psycopg://u@db/xhub",
            },
        ),
        ({"XHUB_NOT_A_SETTING": "1", "OTHER": "x"}, {"listen": "127.0.0.1:7443"}),
    ],
    ids=["listen", "clock-skew", "both", "float", "database-url", "unrelated-ignored"],
)
def test_env_overrides(data_dir: Path, env: dict[str, str], expected: dict[str, Any]):
    config = load_config(data_dir, env=env)
    for name, value in expected.items():
        got = getattr(config, name)
        assert got == value
        assert type(got) is type(value)
    assert config.hub_id == HUB_ID  # untouched settings still come from the file


def test_env_overrides_come_from_os_environ(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XHUB_LISTEN", "127.0.0.1:1234")
    monkeypatch.setenv("XHUB_CLOCK_SKEW_SECONDS", "30")
    config = load_config(data_dir)
    assert config.listen == "127.0.0.1:1234"
    assert config.clock_skew_seconds == 30


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"XHUB_CLOCK_SKEW_SECONDS": "five minutes"}, "clock_skew_seconds"),
        ({"XHUB_WORKERS": "2.5"}, "workers"),
        ({"XHUB_SHUTDOWN_GRACE_SECONDS": "soon"}, "shutdown_grace_seconds"),
    ],
)
def test_bad_env_override_is_a_config_error(data_dir: Path, env: dict[str, str], match: str):
    with pytest.raises(ConfigError, match=match):
        load_config(data_dir, env=env)


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("[hub\nlisten = 1", "xhub.toml"),
        ('[hub]\nlisten = "a"\nlisten = "b"\n', "xhub.toml"),
        ('[hub]\nlisen = "127.0.0.1:1"\n', "unknown setting 'lisen'"),
        ("hub = 3\n", "must be a table"),
        ('[hub]\nclock_skew_seconds = "lots"\n', "clock_skew_seconds"),
    ],
    ids=["syntax", "duplicate-key", "unknown-key", "hub-not-table", "bad-int"],
)
def test_bad_config_file_is_a_config_error(tmp_path: Path, toml: str, match: str):
    (tmp_path / "xhub.toml").write_text(toml, "utf-8")
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path, env={})


def test_cli_reports_a_bad_config_file(data_dir: Path, run: Run):
    config_file = data_dir / "xhub.toml"
    config_file.write_text(config_file.read_text("utf-8") + "colour = 'red'\n", "utf-8")
    code, out, err = run("member", "list", "--data-dir", data_dir)
    assert code == 2
    assert out == ""
    assert err.startswith("error:")
    assert "unknown setting 'colour'" in err


def test_no_config_file_gives_defaults(tmp_path: Path):
    config = load_config(tmp_path, env={})
    assert config == HubConfig(data_dir=tmp_path)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_data_dir(tmp_path: Path, run: Run, pg_url: str) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "hub-pg"
    code, out, err = run("init", root, "--database-url", pg_url)
    assert code == 0, err
    assert "postgresql" in out
    yield root, pg_url


@pytest.mark.postgres
def test_init_with_postgres_creates_the_schema_there(pg_data_dir: tuple[Path, str], run: Run):
    root, pg_url = pg_data_dir
    assert not (root / "xhub.db").exists()
    config = load_config(root, env={})
    assert config.database_url == pg_url
    engine = make_engine(pg_url)
    try:
        assert table_names(engine) >= REGISTRY_TABLES
        assert current_revision(engine) is not None
        with session_factory(engine)() as session:
            hub_row = session.get(MemberRow, HUB_ID)
            assert hub_row is not None
    finally:
        engine.dispose()

    code, _out, err = run(*add_args(root))
    assert code == 0, err
    code, out, _err = run("member", "list", "--data-dir", root)
    assert code == 0
    assert f"CN.440100.{GZ_SAMR}" in out
    assert list(member_rows(config)) == [f"CN.440100.{GZ_SAMR}"]
    assert not (root / "xhub.db").exists()
