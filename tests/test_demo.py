"""`make demo` is the README's first command: run it whole, as a user would, and check
that each part of the story it tells actually happened (not only that it exited 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Each line must appear in the transcript: one per step a reader relies on.
EXPECTED = [
    "certificate chains to hub CA ✓",  # signed round trips between levels
    "tampered message (one payload byte changed after signing): refused UNAUTHENTICATED",
    "second refused ALREADY_EXISTS REPLAYED_MESSAGE",
    "✓ from library     营业执照",  # the checklist filled from the e-certificate library
    "refused PERMISSION_DENIED PURPOSE_NOT_BOUND",  # pull of a type the item does not need
    "✓ reused material",  # the second application reuses the first one's material
    "(端到端核验)",  # the department checked the case against the platform's signature
    "proven append-only (consistency proof) ✓",
    "OK: ",  # xhub audit verify on the exported bundle
    "FAILED: entry #",  # ... and on the tampered copy, naming the entry
    "still verify at the department with the key valid when they were signed ✓",
    "a message signed with the retired key: refused UNAUTHENTICATED UNKNOWN_KEY",
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
