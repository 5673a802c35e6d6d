"""The hub's start-up check of its audit log (DESIGN.md §7): it refuses to start on a
database whose log was altered; two hub processes on one PostgreSQL database share one log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from audit_world import (
    _allowed_index,
    _bad_signature,
    _tamper_entry_sql,
    receipt_for,
    refused_leaf,
    send,
    wait_all_sequenced,
)
from hubkit import HubKit, free_port
from sqlalchemy import event, text

from xhub.cli import main as cli
from xhub.hub.core.runtime import HubRuntime
from xhub.hub.server import StartupError, check_database, start_hub

# -- the start-up check -----------------------------------------------------------------------


def _delete_latest_checkpoint(kit: HubKit, index: int) -> None:
    with kit.engine.begin() as connection:
        connection.execute(
            text(
                "DELETE FROM audit_checkpoints WHERE tree_size = "
                "(SELECT MAX(tree_size) FROM audit_checkpoints)"
            )
        )


def _swap_with_next(kit: HubKit, index: int) -> None:
    with kit.engine.begin() as connection:
        rows = {
            int(r[0]): (bytes(r[1]), bytes(r[2]))
            for r in connection.execute(
                text(
                    "SELECT leaf_index, entry, leaf_hash FROM audit_entries "
                    "WHERE leaf_index IN (:a, :b)"
                ),
                {"a": index, "b": index + 1},
            )
        }
        for mine, theirs in ((index, index + 1), (index + 1, index)):
            connection.execute(
                text("UPDATE audit_entries SET entry = :e, leaf_hash = :h WHERE leaf_index = :i"),
                {"e": rows[theirs][0], "h": rows[theirs][1], "i": mine},
            )


STARTUP_TAMPERING: dict[str, tuple[Callable[[HubKit, int], None], bool]] = {
    "edit-an-entry": (_tamper_entry_sql, True),
    "reorder-two-entries": (_swap_with_next, True),
    "delete-the-latest-checkpoint": (_delete_latest_checkpoint, False),
}


@pytest.mark.parametrize("case", list(STARTUP_TAMPERING))
def test_hub_refuses_to_start_on_a_tampered_log(
    kit: HubKit, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, names_entry = STARTUP_TAMPERING[case]
    index = _allowed_index(kit)
    kit.client("platform").get_member(kit.member_id("auditor"))  # so index + 1 exists
    kit.restart()  # an honest log starts fine
    kit.client("platform").get_member(kit.member_id("issuer"))
    kit.stop()

    tamper(kit, index)
    with pytest.raises(StartupError) as caught:
        kit.run(start_hub(kit.config, port_override=free_port()))
    message = str(caught.value)
    assert "audit log integrity check failed" in message
    if names_entry:
        assert f"entry #{index}" in message
    # `xhub serve` refuses too, with its own exit status.
    port = free_port()
    assert (
        cli.main(["serve", "--data-dir", str(kit.config.data_dir), "--listen", f"127.0.0.1:{port}"])
        == 4
    )
    assert "refused to start" in capsys.readouterr().err


def test_startup_check_on_a_live_log_raises_no_false_alarm(kit: HubKit) -> None:
    """A second hub process starting (check_database) while the first one serves and
    sequences: an honest log must not make it refuse to start."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic(key: str) -> None:
        client = kit.client(key)
        try:
            while not stop.is_set():
                client.get_member(kit.member_id("issuer"))
        except BaseException as exc:
            errors.append(exc)

    def eager_sequencer() -> None:
        """The serving hub's sequencer, without its 0.2 s pause (a busy hub keeps it busy)."""
        assert kit.running is not None
        audit = kit.running.runtime.audit
        try:
            while not stop.is_set():
                if audit.sequence(2) == 0:
                    time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=traffic, args=(k,)) for k in ("platform", "department")]
    threads.append(threading.Thread(target=eager_sequencer))
    for thread in threads:
        thread.start()
    runtime = HubRuntime(kit.config)
    # A large log or a remote database makes every statement of the check take a while.
    event.listen(runtime.engine, "before_cursor_execute", lambda *_: time.sleep(0.005))
    failures: list[str] = []
    checks = 0
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                check_database(runtime)
            except StartupError as exc:
                failures.append(str(exc))
            checks += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        runtime.close()
    assert errors == []
    assert failures == [], f"{len(failures)} of {checks} start-up checks failed: {failures[0]}"


# -- two hub processes on one PostgreSQL database ---------------------------------------------


@pytest.mark.postgres
def test_two_hubs_share_one_log_on_postgres(hub_kit_pg: HubKit) -> None:
    kit = hub_kit_pg
    replica = kit.start_replica()
    addresses = [kit.address, replica]

    def drive(job: int) -> list[bytes]:
        key = ("platform", "department", "issuer")[job % 3]
        client = kit.client(key, address=addresses[job % 2])
        leaves = []
        for i in range(6):
            answer = client.lookup_member(kit.member_id("auditor" if i % 2 else "platform"))
            assert answer.header.receipt.leaf_hash
            leaves.append(bytes(answer.header.receipt.leaf_hash))
        leaves.append(
            refused_leaf(lambda: send(client, _bad_signature(kit, client)), "BAD_SIGNATURE")
        )
        return leaves

    with ThreadPoolExecutor(max_workers=8) as pool:
        leaves = [leaf for batch in pool.map(drive, range(8)) for leaf in batch]
    assert len(set(leaves)) == len(leaves) == 8 * 7

    # Every receipt is proven by the *other* hub.
    here, there = kit.client("auditor"), kit.client("auditor", address=replica)
    for n, leaf in enumerate(leaves):
        (here if n % 2 else there).prove_logged(receipt_for(leaf))

    total = wait_all_sequenced(kit)
    with kit.engine.connect() as connection:
        indexes = [
            int(r[0])
            for r in connection.execute(
                text("SELECT leaf_index FROM audit_entries ORDER BY leaf_index")
            )
        ]
        sizes = [
            int(r[0])
            for r in connection.execute(
                text("SELECT tree_size FROM audit_checkpoints ORDER BY tree_size")
            )
        ]
    assert indexes == list(range(total)), "every entry sequenced exactly once"
    assert sizes[-1] == total and len(set(sizes)) == len(sizes)
    assert kit.running is not None
    assert kit.running.runtime.audit.check_integrity()[0] == total
    assert kit.replicas[0].runtime.audit.check_integrity()[0] == total

    # Both hubs serve the same checkpoint (each GetCheckpoint is itself logged, so retry).
    deadline = time.monotonic() + 10
    while True:
        first, second = here.checkpoint(), there.checkpoint()
        if first.note == second.note:
            break
        assert time.monotonic() < deadline, "the hubs never served the same checkpoint"
        time.sleep(0.3)
    older, newer = sorted((first, second), key=lambda cp: cp.size)
    there.prove_consistent(older, here.checkpoint())
    here.prove_consistent(newer, there.checkpoint())
