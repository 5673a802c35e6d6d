"""The audit part of the demo: query, export and verify evidence; a tampered log refused."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

from xhub.connectors import HubClient, XhubError
from xhub.demo.process import say, show, xhub


def audit_section(
    data_dir: Path, clients: dict[str, HubClient], bundles: dict[str, Path], port: int
) -> bool:
    say(
        "\n-- audit log (审计): every call above, allowed or refused, is a leaf of an RFC 9162 tree"
    )
    platform = clients["lw_center"]
    receipt = platform.lookup_member(clients["gz_market"].member_id).header.receipt
    first = platform.checkpoint()
    checkpoint, index = platform.prove_logged(receipt)
    say(
        f"  platform's receipt for its last lookup: leaf {receipt.leaf_hash.hex()[:16]}…, "
        f"proven at index {index} of signed checkpoint size {checkpoint.size} ✓"
    )
    platform.prove_consistent(first, checkpoint)
    say(f"  checkpoint {first.size} → {checkpoint.size} proven append-only (consistency proof) ✓")
    try:
        next(platform.query_audit())
        say("  non-auditor query: ACCEPTED (this is a bug)")
        return False
    except XhubError as exc:
        say(
            f"  platform tries to query the log: refused {exc.code.name} {exc.reason_name} (logged)"
        )
    hub = f"127.0.0.1:{port}"
    auditor = str(bundles["lw_audit"])
    platform_id = platform.member_id
    say(f"\n  $ xhub audit query --bundle <效能监察> --member {platform_id}")
    result = xhub("audit", "query", "--bundle", auditor, "--hub", hub, "--member", platform_id)
    show(result)
    if result.returncode != 0:
        return False
    evidence = data_dir / "evidence.json"
    say("\n  $ xhub audit export --bundle <效能监察> --out evidence.json")
    result = xhub("audit", "export", "--bundle", auditor, "--hub", hub, "--out", str(evidence))
    show(result)
    if result.returncode != 0:
        return False
    log_key = xhub("audit", "log-key", "--data-dir", str(data_dir)).stdout.strip()
    say("\n  $ xhub audit verify evidence.json --log-key <log key>")
    result = xhub("audit", "verify", str(evidence), "--log-key", log_key)
    show(result)
    if result.returncode != 0:
        return False
    tampered = data_dir / "evidence-tampered.json"
    document = json.loads(evidence.read_text("utf-8"))
    victim = document["entries"][len(document["entries"]) // 2]
    entry = bytearray(base64.b64decode(victim["entry"]))
    entry[-3] ^= 0x01
    victim["entry"] = base64.b64encode(bytes(entry)).decode()
    tampered.write_text(json.dumps(document), "utf-8")
    say(f"\n  one bit of entry #{victim['leaf_index']} flipped in a copy of the bundle:")
    say("  $ xhub audit verify evidence-tampered.json --log-key <log key>")
    result = xhub("audit", "verify", str(tampered), "--log-key", log_key)
    show(result)
    return result.returncode == 1


def tamper_section(data_dir: Path, port: int) -> bool:
    say("\n-- someone with write access edits one audit row in the hub database")
    result = xhub("audit", "check", "--data-dir", str(data_dir))
    show(result, "  before: ")
    with sqlite3.connect(data_dir / "xhub.db") as db:
        db.execute(
            "UPDATE audit_entries SET entry = CAST(entry || x'00' AS BLOB) WHERE leaf_index = "
            "(SELECT MAX(leaf_index) / 2 FROM audit_entries)"
        )
    result = xhub("serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}")
    say(f"  $ xhub serve → exit status {result.returncode}")
    for line in result.stderr.strip().splitlines()[-1:]:
        say("    " + line[:300])
    return result.returncode == 4
