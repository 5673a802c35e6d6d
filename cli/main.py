"""`xhub` command line: init, member, serve, audit, catalog, certificates, materials, db."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from xhub.cli.ca import add_ca_commands
from xhub.cli.checks import add_version, warn_unknown_environment
from xhub.cli.keys import add_key_commands
from xhub.cli.members import MEMBER_HANDLERS, add_member_commands
from xhub.cli.ops import add_ops_commands
from xhub.hub.core.config import ConfigError
from xhub.hub.core.data_dir import private_files
from xhub.hub.core.db import make_engine, migrate, session_factory
from xhub.hub.core.failures import RedactingFormatter
from xhub.hub.server import StartupError
from xhub.hub.setup import (
    SetupError,
    init_data_dir,
    open_config,
    with_listen,
)
from xhub.protocol import codes
from xhub.protocol.bundle import BundleError
from xhub.protocol.errors import TransportError, XhubError

DEFAULT_DATA_DIR = os.environ.get("XHUB_DATA_DIR", "xhub-data")


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_DATA_DIR),
        help="hub data directory (default: $XHUB_DATA_DIR or ./xhub-data)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xhub", description="xhub data-sharing exchange hub")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    add_version(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create a data directory: CA, hub keys, database")
    init.add_argument("data_dir", type=Path)
    init.add_argument("--hub-id", default="CN.440000.XHUB", help="member id of the hub itself")
    init.add_argument("--name", default="xhub 政务数据共享交换平台", help="hub display name")
    init.add_argument("--listen", default="127.0.0.1:7443", help="host:port to serve on")
    init.add_argument(
        "--advertise", default="", help="host:port members dial (needed with 0.0.0.0 / ::)"
    )
    init.add_argument(
        "--database-url", default="", help="SQLAlchemy URL (default: SQLite in the data dir)"
    )

    add_member_commands(commands, _data_dir_arg)

    serve = commands.add_parser("serve", help="run the hub")
    _data_dir_arg(serve)
    serve.add_argument("--listen", help="override host:port")

    audit = commands.add_parser("audit", help="audit log tools (审计)")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    for name, text in (
        ("query", "print matching audit records (auditor bundle)"),
        ("export", "write an offline evidence bundle (auditor bundle)"),
    ):
        sub = audit_commands.add_parser(name, help=text)
        sub.add_argument("--bundle", type=Path, required=True, help="auditor member bundle dir")
        sub.add_argument("--hub", help="hub address, overriding the bundle's")
        sub.add_argument("--member", default="", help="caller or recipient member id")
        sub.add_argument("--subject", default="", help="data subject's code (USCC / ID)")
        sub.add_argument("--case", default="", help="case number")
        sub.add_argument("--method", default="", help="full gRPC method")
        sub.add_argument("--decision", choices=["allowed", "denied"], help="only this outcome")
        sub.add_argument("--since", help="ISO time, inclusive")
        sub.add_argument("--until", help="ISO time, exclusive")
    audit_commands.choices["export"].add_argument("--out", type=Path, required=True)
    audit_commands.choices["export"].add_argument(
        "--previous-checkpoint", type=Path, help="an earlier checkpoint note to prove consistency"
    )
    verify = audit_commands.add_parser("verify", help="verify an evidence bundle offline")
    verify.add_argument("bundle_file", type=Path)
    verify.add_argument("--log-key", required=True, help="log verifier key, or a file holding it")
    check = audit_commands.add_parser(
        "check", help="recompute the stored log against its checkpoint"
    )
    _data_dir_arg(check)
    key = audit_commands.add_parser("log-key", help="print the log's verifier key")
    _data_dir_arg(key)

    materials = commands.add_parser("materials", help="material library (材料库)")
    material_commands = materials.add_subparsers(dest="materials_command", required=True)
    gc = material_commands.add_parser(
        "gc", help="delete blobs no material references (safe while uploads run)"
    )
    _data_dir_arg(gc)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply Alembic migrations")
    _data_dir_arg(upgrade)
    _add_catalog_and_certificate_commands(commands)
    HANDLERS.update(add_key_commands(commands, _data_dir_arg))
    HANDLERS.update(add_ca_commands(commands, _data_dir_arg))
    HANDLERS.update(add_ops_commands(commands, _data_dir_arg))
    return parser


def _add_catalog_and_certificate_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    catalog = commands.add_parser("catalog", help="item catalogue (事项目录)")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    load = catalog_commands.add_parser(
        "load", help="check a YAML/JSON catalogue file and load it (all or nothing)"
    )
    load.add_argument("file", type=Path, help="catalogue file (format: hub/catalog_file.py)")
    _data_dir_arg(load)
    load.add_argument(
        "--known-types",
        type=Path,
        help="file of known certificate type codes (证照类型), one per line; "
        "default: any well-formed code",
    )
    listing = catalog_commands.add_parser("list", help="list the loaded items")
    _data_dir_arg(listing)

    certificates = commands.add_parser("certificates", help="e-certificates (电子证照)")
    certificate_commands = certificates.add_subparsers(dest="certificates_command", required=True)
    imp = certificate_commands.add_parser(
        "import", help="publish certificates from a CSV or JSON-lines file (批量导入)"
    )
    imp.add_argument("file", type=Path, help="CSV with a header row, or .jsonl")
    imp.add_argument("--bundle", type=Path, required=True, help="issuer member bundle dir")
    imp.add_argument("--hub", help="hub address, overriding the bundle's")
    imp.add_argument(
        "--mapping", type=Path, help="TOML: [columns], [defaults], [status_codes] (状态码映射)"
    )
    imp.add_argument("--report", type=Path, help="write failed rows as CSV (line, reason)")
    imp.add_argument("--workers", type=int, default=4, help="publishing threads (default 4)")


def cmd_init(args: argparse.Namespace) -> int:
    with private_files():
        config = init_data_dir(
            args.data_dir,
            hub_id=args.hub_id,
            hub_name=args.name,
            listen=args.listen,
            advertise=args.advertise,
            database_url=args.database_url,
        )
    print(f"initialised hub {config.hub_id} in {config.data_dir}")
    print(f"  CA certificate : {config.paths.ca_cert}")
    print(f"  database       : {config.effective_database_url}")
    print(
        "  next           : the member runs `xhub-connector keygen`, then "
        f"xhub member add --data-dir {config.data_dir} --csr enrolment.req ..."
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from xhub.hub.server import serve_forever

    config = open_config(args.data_dir)
    if args.listen:
        config = with_listen(config, args.listen)
    with private_files():  # what the hub writes while serving (database pages, blobs)
        asyncio.run(serve_forever(config))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    print("database schema is at the latest revision")
    return 0


def _audit_filters(args: argparse.Namespace) -> dict[str, object]:
    from datetime import datetime

    from google.protobuf.timestamp_pb2 import Timestamp

    from xhub.v1 import audit_pb2

    filters: dict[str, object] = {
        "member_id": args.member,
        "subject": args.subject,
        "case_id": args.case,
        "method": args.method,
    }
    if args.decision:
        filters["decision"] = (
            audit_pb2.AUDIT_DECISION_ALLOWED
            if args.decision == "allowed"
            else audit_pb2.AUDIT_DECISION_DENIED
        )
    for name in ("since", "until"):
        value = getattr(args, name)
        if value:
            stamp = Timestamp()
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                raise ConfigError(f"--{name} needs a time zone, e.g. {value}+08:00")
            stamp.FromDatetime(moment)
            filters[name] = stamp
    return filters


def cmd_audit_query(args: argparse.Namespace) -> int:
    from xhub.connectors import HubClient
    from xhub.connectors.sdk.auditor import query
    from xhub.protocol.log.evidence import entry_time
    from xhub.v1 import audit_pb2

    with HubClient.from_bundle(args.bundle, hub_address=args.hub) as client:
        print(
            f"{'index':>6}  {'time (UTC)':<19}  {'sender':<40}  {'method':<34}  "
            f"{'decision':<8}  {'reason':<18}  subject"
        )
        count = 0
        for record, entry in query(client, **_audit_filters(args)):
            index = str(record.leaf_index) if record.sequenced else "…"
            decision = audit_pb2.AuditDecision.Name(entry.decision).removeprefix("AUDIT_DECISION_")
            print(
                f"{index:>6}  {entry_time(record.entry):<19}  {entry.sender[:40]:<40}  "
                f"{entry.method.rsplit('.', 1)[-1][:34]:<34}  {decision.lower():<8}  "
                f"{entry.reason[:18]:<18}  {record.subject}"
            )
            count += 1
        print(f"{count} record(s)")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from xhub.connectors import HubClient
    from xhub.connectors.sdk.auditor import export_evidence

    previous = args.previous_checkpoint.read_bytes() if args.previous_checkpoint else b""
    with HubClient.from_bundle(args.bundle, hub_address=args.hub) as client:
        bundle, pending = export_evidence(
            client,
            previous_checkpoint=previous,
            show_progress=sys.stderr.isatty(),
            **_audit_filters(args),
        )
    args.out.write_text(bundle.to_json(), "utf-8")
    print(
        f"wrote {len(bundle.entries)} entries, {len(bundle.members)} member certificates "
        f"and checkpoint to {args.out}"
    )
    if pending:
        print(f"note: {pending} matching entries are not yet in a checkpoint; export again later")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from xhub.protocol.log.evidence import BundleInvalid, load_bundle, verify_bundle
    from xhub.protocol.log.note import NoteError, NoteVerifier

    key_text = args.log_key
    if Path(key_text).is_file():
        key_text = Path(key_text).read_text("utf-8").strip()
    try:
        verifier = NoteVerifier.from_vkey(key_text)
    except NoteError as exc:
        print(f"error: --log-key is not a note verifier key: {exc}", file=sys.stderr)
        return 2
    try:
        report = verify_bundle(load_bundle(args.bundle_file), verifier)
    except BundleInvalid as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    cp = report.checkpoint
    print(
        f"OK: {report.entries} entries are in checkpoint {cp.origin} size {cp.size} "
        f"root {cp.root_hash.hex()[:16]}…"
    )
    print(
        f"    {report.envelopes_checked} original envelopes match their entries; "
        f"{report.refused_signatures} unsigned/forged ones were logged as refused"
    )
    if report.refused_prefixes:
        print(
            f"    {report.refused_prefixes} refused entries carry only their envelope's first "
            "bytes (the hub keeps no more of a refusal; the entry's digest names all of them)"
        )
    return 0


def cmd_audit_check(args: argparse.Namespace) -> int:
    from xhub.hub.core.audit_log import TamperedLogError
    from xhub.hub.core.runtime import HubRuntime

    runtime = HubRuntime(open_config(args.data_dir))
    try:
        size, root = runtime.audit.check_integrity(
            progress=lambda done, total: print(f"  {done} / {total}", file=sys.stderr)
        )
    except TamperedLogError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    print(
        f"OK: {size} entries match the last signed checkpoint (root {root.hex()[:16]}…); "
        "every stored checkpoint verifies and extends the one before"
    )
    return 0


def cmd_audit_log_key(args: argparse.Namespace) -> int:
    from xhub.hub.core.audit_log import load_log_signer

    config = open_config(args.data_dir)
    print(load_log_signer(config.effective_log_origin, config.paths.log_key).verifier_key())
    return 0


def cmd_catalog_load(args: argparse.Namespace) -> int:
    from xhub.hub.catalog.file import CatalogFileError, load_catalog, read_known_types

    config = open_config(args.data_dir)
    try:
        known = read_known_types(args.known_types) if args.known_types else None
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: --known-types: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine).begin() as session:
            items = load_catalog(session, args.file, known_types=known)
    except CatalogFileError as exc:
        print(f"error: {len(exc.problems)} problem(s); nothing was loaded:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem.render(exc.source)}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"loaded {len(items)} items (事项)")
    return 0


def cmd_catalog_list(args: argparse.Namespace) -> int:
    from xhub.hub.catalog.file import stored_items
    from xhub.hub.core.db import MemberRow

    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine)() as session:
            items = list(stored_items(session))
            for item in items:
                names = []
                for member_id in item.departments:
                    row = session.get(MemberRow, member_id)
                    names.append(row.name if row is not None else member_id)
                print(
                    f"{item.code}  {item.name}  {item.time_limit_days} working days (工作日)  "
                    f"departments (办理部门): {', '.join(names)}"
                )
                for material in item.materials:
                    ways = [f"certificate {t}" for t in material.certificate_types]
                    ways += [f"material {t}" for t in material.material_types]
                    holder = " [legal representative 法定代表人]" if material.holder else ""
                    print(f"    {material.code}  {material.name}: {' | '.join(ways)}{holder}")
            print(f"{len(items)} item(s)")
    finally:
        engine.dispose()
    return 0


def cmd_certificates_import(args: argparse.Namespace) -> int:
    from xhub.connectors import HubClient
    from xhub.connectors.issuer.importer import (
        FieldMapping,
        ImportFileError,
        RowSource,
        import_certificates,
        issuer_of,
        load_mapping,
    )

    try:
        mapping = load_mapping(args.mapping) if args.mapping else FieldMapping()
        source = RowSource(args.file, mapping)
    except ImportFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with source, HubClient.from_bundle(args.bundle, hub_address=args.hub) as client:
        report = import_certificates(
            client, source, mapping, issuer_of(client), workers=args.workers, total=source.total
        )
    for failure in report.failures:
        print(f"line {failure.line}: {failure.reason}")
    print(report.summary())
    if args.report:
        try:
            report.write_csv(args.report)
        except OSError as exc:
            print(f"error: cannot write the report: {exc}", file=sys.stderr)
            return 2
        print(f"report written to {args.report}")
    return 1 if report.failures else 0


def cmd_materials_gc(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from xhub.hub.materials.blobstore import LocalBlobStore
    from xhub.hub.materials.store import collect_garbage

    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with tqdm(desc="blobs examined", unit="blob", disable=not sys.stderr.isatty()) as bar:

            def tick(done: int) -> None:
                bar.update(done - bar.n)

            report = collect_garbage(
                session_factory(engine), LocalBlobStore(config.paths.blobs), progress=tick
            )
    finally:
        engine.dispose()
    print(
        f"examined {report.examined} blobs: deleted {report.deleted}, kept "
        f"{report.kept_referenced} referenced and {report.kept_in_flight} being uploaded; "
        f"removed {report.temporaries_removed} stale temporary files"
    )
    return 0


HANDLERS = {
    ("materials", "gc"): cmd_materials_gc,
    ("catalog", "load"): cmd_catalog_load,
    ("catalog", "list"): cmd_catalog_list,
    ("certificates", "import"): cmd_certificates_import,
    ("audit", "query"): cmd_audit_query,
    ("audit", "export"): cmd_audit_export,
    ("audit", "verify"): cmd_audit_verify,
    ("audit", "check"): cmd_audit_check,
    ("audit", "log-key"): cmd_audit_log_key,
    ("init", None): cmd_init,
    **MEMBER_HANDLERS,
    ("serve", None): cmd_serve,
    ("db", "upgrade"): cmd_db_upgrade,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler()
    console.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[console])
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    warn_unknown_environment()
    sub = getattr(args, f"{args.command}_command", None)
    handler = HANDLERS[(args.command, sub)]
    try:
        return handler(args)
    except (XhubError, SetupError, ConfigError, codes.CodeError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: database: {first_line}", file=sys.stderr)
        return 2
    except TransportError as exc:
        print(f"error: cannot reach the hub: {exc}", file=sys.stderr)
        return 3
    except StartupError as exc:
        print(f"error: hub refused to start: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
