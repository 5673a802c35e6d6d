"""The key rotation part of the demo (签名密钥轮换): the platform replaces its signing key,
the case it submitted before still verifies at the department, the retired key is refused."""

from __future__ import annotations

from pathlib import Path

from xhub.connectors import HubClient, XhubError
from xhub.demo.process import say


def rotation_section(clients: dict[str, HubClient], bundles: dict[str, Path]) -> bool:
    say("\n-- key rotation (签名密钥轮换): the platform replaces its message-signing key")
    platform, department = clients["lw_center"], clients["lw_market"]
    old_bundle = platform.bundle
    old_key = old_bundle.signer.key_id
    answer = platform.rotate_signing_key()
    new_key = platform.bundle.signer.key_id
    windows = {k.key_id: k for k in answer.member.signing_keys}
    say(
        f"  platform key {old_key[:12]}… → {new_key[:12]}… (old window closed at "
        f"{windows[old_key].valid_until.ToJsonString()}; bundle files switched over)"
    )
    fresh = HubClient.from_bundle(bundles["lw_market"])  # learns the platform's keys anew
    try:
        cases = list(fresh.subscribe_cases(timeout=2))
        if not cases:
            say("  the department found no case to check (this is a bug)")
            return False
        for case in cases:
            fresh.verify_submission(case)
        say(
            f"  {len(cases)} case(s) signed before the rotation still verify at the "
            "department with the key valid when they were signed ✓"
        )
    finally:
        fresh.close()
    department.get_member(platform.member_id)
    platform.get_member(department.member_id)
    say("  the platform's next call is signed with the new key and admitted ✓")
    stale = HubClient(old_bundle)
    try:
        stale.get_member(department.member_id)
        say("  retired key: ACCEPTED (this is a bug)")
        return False
    except XhubError as exc:
        say(f"  a message signed with the retired key: refused {exc.code.name} {exc.reason_name}")
    finally:
        stale.close()
    return True
