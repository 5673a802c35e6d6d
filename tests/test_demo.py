"""`make demo` is the README's first command: run it whole, as a user would, and check
that each part of the story it tells actually happened (not only that it exited 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xhub.demo.enrolment import member_keys_held_by_hub, members_dir
from xhub.demo.region import DEMO_MEMBERS
from xhub.hub.core.config import load_config

# Each line must appear in the transcript: one per step a reader relies on.
EXPECTED = [
    "the hub's data directory holds no member private key ✓",  # every member enrolled by CSR
    "certificate chains to hub CA ✓",  # signed round trips between levels
    "tampered message (one payload byte changed after signing): refused UNAUTHENTICATED",
    "second refused ALREADY_EXISTS REPLAYED_MESSAGE",
    "✓ from library     营业执照",  # the checklist filled from the e-certificate library
    "refused PERMISSION_DENIED PURPOSE_NOT_BOUND",  # pull of a type the item does not need
    "✓ reused material",  # the second application reuses the first one's material
    # the department checked the case against the platform's signature, applicant and item too
    "(端到端核验): the applicant (code and type), the item,",
    "(部门调阅材料): 5 of 5 attachments",  # the connector fetched the case's references
    "matches the platform's signed manifest ✓",  # the department opened the floor plan
    "proven append-only (consistency proof) ✓",
    "OK: ",  # xhub audit verify on the exported bundle
    "FAILED: entry #",  # ... and on the tampered copy, naming the entry
    "still verify at the department with the key valid when they were signed ✓",
    "a message signed with the retired key: refused UNAUTHENTICATED UNKNOWN_KEY",
    "calls allowed, ",  # the metrics summary scraped from the hub's operations port
    "$ xhub serve → exit status 4",  # the hub refuses to serve an edited log
    "demo complete ✓",
]


@pytest.mark.timeout(300)
def test_make_demo_tells_the_whole_story(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xhub.demo", "--data-dir", str(tmp_path / "hub")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    missing = [line for line in EXPECTED if line not in done.stdout]
    assert not missing, f"missing from the transcript: {missing}\n{done.stdout[-3000:]}"
    assert "(0 refused)" in done.stdout  # the genuine case passes the end-to-end check
    assert done.stdout.count("  enrolled ") == len(DEMO_MEMBERS)  # one line per enrolment
    # After the whole story, the hub's data directory still holds no member private key.
    data_dir = tmp_path / "hub"
    member_dirs = sorted(members_dir(data_dir).iterdir())
    assert len(member_dirs) == len(DEMO_MEMBERS)
    assert all((d / "tls.key").exists() and (d / "signing.key").exists() for d in member_dirs)
    assert member_keys_held_by_hub(load_config(data_dir, env={}), member_dirs) == []
