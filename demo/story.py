"""`make demo`: a hub on SQLite and a real end-to-end exchange in the demo region.

Creates a fresh data directory, enrols the members of DOMAIN.md's demo region (each by
its own keys and CSR), starts `xhub serve` as a real process, runs signed round trips between
province, municipal and district members, shows a tampered and a replayed
message being refused, stops the hub with SIGTERM and exits 0.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import grpc

from xhub.connectors import HubClient
from xhub.demo.audit import audit_section, tamper_section
from xhub.demo.cases import case_section
from xhub.demo.enrolment import enrol, member_keys_held_by_hub, members_dir
from xhub.demo.intake import FoodCase, Tally, intake_section, second_application
from xhub.demo.process import LEVELS, free_port, refusal, running_hub, say
from xhub.demo.region import DEMO_MEMBERS, HUB_ID, HUB_NAME
from xhub.demo.rotation import rotation_section
from xhub.hub.setup import init_data_dir, open_config
from xhub.protocol.codes import division_level
from xhub.v1 import registry_pb2


def run(data_dir: Path) -> int:
    port = free_port()
    say(f"== xhub demo: {HUB_NAME}")
    init_data_dir(data_dir, hub_id=HUB_ID, hub_name=HUB_NAME, listen=f"127.0.0.1:{port}")
    say(f"hub {HUB_ID} initialised in {data_dir} (SQLite, CA and keys created)")
    say(
        "\n-- enrolment: each member makes its own keys (xhub-connector keygen), the hub "
        "certifies the request (xhub member add --csr)"
    )
    config = open_config(data_dir)
    bundles: dict[str, Path] = {}
    for member in DEMO_MEMBERS:
        spec, bundles[member.key] = enrol(config, member, members_dir(data_dir) / member.key)
        say(
            f"  enrolled {LEVELS[int(spec.level)]} {member.name:<14} {spec.member_id}"
            f"  [{member.roles}; TLS P-256, signs with {member.signing_alg}; keys in "
            f"{bundles[member.key].parent.name}/{member.key}]"
        )
    leaked = member_keys_held_by_hub(config, list(bundles.values()))
    if leaked:
        say(f"demo FAILED: the hub's data directory holds member private keys: {leaked}")
        return 1
    say("  the hub's data directory holds no member private key ✓")

    with running_hub(data_dir, port) as hub:
        clients = {key: HubClient.from_bundle(path) for key, path in bundles.items()}
        try:
            clients["lw_center"].wait_until_serving(timeout=30)
            say(f"\nhub serving on 127.0.0.1:{port} over mutual TLS (pid {hub.pid})")
            say(
                "\n-- signed round trips between levels (request signed by the member, "
                "response signed by the hub, both verified)"
            )
            pairs = [
                ("lw_center", "gz_market"),  # district → municipal
                ("gz_market", "gd_police"),  # municipal → province
                ("gd_police", "lw_health"),  # province → district (Ed25519 member)
                ("lw_health", "lw_center"),  # Ed25519 signer asks
            ]
            for asker, target in pairs:
                client = clients[asker]
                target_id = clients[target].member_id
                found = client.get_member(target_id)
                client.verified_certificate(found)
                say(
                    f"  {_label(asker)} → hub → {_label(target)}: {found.name} "
                    f"(level {LEVELS[found.level]}, {len(found.signing_keys)} key(s), "
                    "certificate chains to hub CA ✓)"
                )
            district = list(clients["gd_police"].list_members(division_prefix="440103"))
            issuers = list(clients["lw_center"].list_members(role=registry_pb2.ROLE_ISSUER))
            say(
                f"  province lists Liwan district members: {len(district)}; "
                f"platform lists issuers: {len(issuers)}"
            )

            say("\n-- refusals")
            platform = clients["lw_center"]
            lookup = registry_pb2.MemberLookup(member_id=clients["gz_market"].member_id)
            tampered = platform.transport.seal(lookup)
            tampered.payload = tampered.payload.replace(b"440100", b"440000", 1)
            try:
                platform.transport.registry.GetMember(
                    registry_pb2.GetMemberRequest(envelope=tampered), timeout=5
                )
                say("  tampered message: ACCEPTED (this is a bug)")
                return 1
            except grpc.RpcError as exc:
                say(
                    f"  tampered message (one payload byte changed after signing): "
                    f"refused {refusal(exc)}"
                )
            original = platform.transport.seal(lookup)
            platform.transport.registry.GetMember(
                registry_pb2.GetMemberRequest(envelope=original), timeout=5
            )
            try:
                platform.transport.registry.GetMember(
                    registry_pb2.GetMemberRequest(envelope=original), timeout=5
                )
                say("  replayed message: ACCEPTED (this is a bug)")
                return 1
            except grpc.RpcError as exc:
                say(
                    f"  replayed message (same envelope sent twice): first accepted, "
                    f"second refused {refusal(exc)}"
                )
            tally = Tally()
            food = FoodCase()
            if not intake_section(data_dir, clients, tally, food):
                return 1
            if not second_application(data_dir, clients, tally):
                return 1
            if not case_section(data_dir, clients, bundles, hub, food):
                return 1
            if not audit_section(data_dir, clients, bundles, port):
                return 1
            if not rotation_section(clients, bundles):
                return 1
            say(f"\n-- metrics (监控): http://127.0.0.1:{hub.metrics_port}/metrics, plain HTTP")
            say(f"  since the hub process started: {hub.metrics_summary()}")
        finally:
            for client in clients.values():
                client.close()
        say("\nstopping hub (SIGTERM: not ready, NOT_SERVING, subscriptions end, then drain)")
    code = hub.returncode
    say(f"hub exited with status {code}")
    if code != 0:
        say("demo FAILED: hub did not stop cleanly")
        return 1
    if not tamper_section(data_dir, port):
        return 1
    say("\ndemo complete ✓")
    return 0


def _label(key: str) -> str:
    member = next(m for m in DEMO_MEMBERS if m.key == key)
    return f"{member.name}({LEVELS[int(division_level(member.division))]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data-dir", type=Path, help="keep the demo hub here (default: a temp dir)"
    )
    args = parser.parse_args()
    if args.data_dir:
        for old in (args.data_dir, members_dir(args.data_dir)):
            if old.exists():
                shutil.rmtree(old)
        return run(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="xhub-demo-") as tmp:
        return run(Path(tmp) / "hub")
