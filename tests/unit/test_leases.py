"""Leases and heartbeats in the database (models/leases.py), on SQLite and PostgreSQL:
who may claim a task, what the sweeper finds, and that of several sweepers exactly one
sends a lost task again."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from models.db import session_scope
from models.leases import (
    LeaseState,
    TaskLease,
    beat,
    claim_lease,
    finish_lease,
    forget_workers,
    held_counts,
    insert_leases,
    live_workers,
    mark_sent,
    mark_stopped,
    orphaned_leases,
    release_lease,
    take_for_resend,
    unsent_leases,
    waiting_leases,
)
from models.tables import utcnow

DEAD_AFTER = 15.0


def _beat(name: str, at) -> None:
    with session_scope() as s:
        beat(session=s, name=name, hostname="h", pid=1, queues="evalq.offline",
             concurrency=4, now=at)


def _lease(queue: str = "evalq.offline", sent: bool = True) -> int:
    now = utcnow()
    with session_scope() as s:
        (lease_id,) = insert_leases(session=s, now=now, rows=[{
            "task": "evalq.run_items", "queue": queue, "task_args": [1, [[10, 0]]],
            "task_kwargs": {"config": 0}, "experiment_id": 1}])
        if sent:
            mark_sent(session=s, lease_ids=[lease_id], now=now)
    return lease_id


def _claim(lease_id: int, owner: str, now=None) -> tuple[str, int]:
    with session_scope() as s:
        return claim_lease(session=s, lease_id=lease_id, owner=owner, now=now or utcnow(),
                           dead_after_s=DEAD_AFTER)


def test_a_lease_is_claimed_once_while_its_owner_lives(db_url):
    now = utcnow()
    _beat("a", now)
    _beat("b", now)
    lease = _lease()
    assert _claim(lease, "a") == ("claimed", 1)
    assert _claim(lease, "b") == ("held", 0)  # a duplicate delivery does nothing
    assert _claim(lease, "a") == ("held", 0)  # also in the owner's own process
    with session_scope() as s:
        assert held_counts(session=s) == {"a": 1}
        finish_lease(session=s, lease_id=lease, owner="a")
    assert _claim(lease, "b") == ("gone", 0)


def test_a_dead_or_stopped_owner_lets_another_claim(db_url):
    start = utcnow()
    _beat("dies", start - timedelta(seconds=DEAD_AFTER + 1))
    _beat("stops", start)
    _beat("other", start)
    first, second = _lease(), _lease()
    assert _claim(first, "dies", now=start - timedelta(seconds=DEAD_AFTER + 1))[0] == "claimed"
    assert _claim(second, "stops")[0] == "claimed"
    with session_scope() as s:
        mark_stopped(session=s, name="stops", now=utcnow())
        names = [w.name for w in live_workers(session=s, now=utcnow(),
                                              dead_after_s=DEAD_AFTER)]
        orphans = {lease.id for lease in orphaned_leases(session=s, now=utcnow(),
                                                         dead_after_s=DEAD_AFTER)}
    assert names == ["other"]
    assert orphans == {first, second}
    assert _claim(first, "other") == ("claimed", 2)  # attempts count every start


def test_of_several_sweepers_exactly_one_takes_a_lost_lease(db_url):
    now = utcnow()
    _beat("dead", now - timedelta(seconds=60))
    lease = _lease()
    assert _claim(lease, "dead", now=now - timedelta(seconds=60))[0] == "claimed"

    def sweep(_: int) -> bool:
        with session_scope() as s:
            return take_for_resend(session=s, lease_id=lease, now=utcnow(),
                                   expect={"state": LeaseState.RUNNING, "owner": "dead"}
                                   ) is not None

    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(sweep, range(8)))
    assert taken.count(True) == 1
    with session_scope() as s:
        row = s.get(TaskLease, lease)
        assert row is not None
        assert (row.state, row.owner, row.sent_at, row.sends) == (LeaseState.QUEUED, None,
                                                                  None, 2)
        assert row.task_args == [1, [[10, 0]]] and row.task_kwargs == {"config": 0}


def test_unsent_and_waiting_leases(db_url):
    unsent = _lease(sent=False)
    waiting = _lease(queue="evalq.online")
    later = utcnow() + timedelta(seconds=30)
    with session_scope() as s:
        assert [x.id for x in unsent_leases(session=s, older_than=later)] == [unsent]
        assert unsent_leases(session=s, older_than=utcnow() - timedelta(seconds=30)) == []
        assert waiting_leases(session=s, queue="evalq.online", sent_before=later) == {
            waiting: 1}
        assert waiting_leases(session=s, queue="evalq.offline", sent_before=later) == {}


def test_a_released_lease_is_free_and_a_retry_is_not_suspect_before_its_eta(db_url):
    _beat("w", utcnow())
    lease = _lease()
    assert _claim(lease, "w")[0] == "claimed"
    eta = utcnow() + timedelta(seconds=20)
    with session_scope() as s:
        release_lease(session=s, lease_id=lease, owner="w", now=utcnow(), sent_at=eta)
        assert waiting_leases(session=s, queue="evalq.offline", sent_before=utcnow()) == {}
        assert waiting_leases(session=s, queue="evalq.offline",
                              sent_before=eta + timedelta(seconds=1)) == {lease: 2}
    assert _claim(lease, "w") == ("claimed", 2)


def test_forgotten_workers_are_those_long_gone_and_holding_nothing(db_url):
    old = utcnow() - timedelta(days=2)
    _beat("gone", old)
    _beat("gone-holding", old)
    lease = _lease()
    assert _claim(lease, "gone-holding", now=old)[0] == "claimed"
    with session_scope() as s:
        assert forget_workers(session=s, before=utcnow() - timedelta(days=1)) == 1
        names = {w.name for w in live_workers(session=s, now=old, dead_after_s=DEAD_AFTER)}
    assert names == {"gone-holding"}


@pytest.mark.parametrize("healthy_for", [0.0, 1.0])
def test_a_sweeper_that_just_became_healthy_judges_no_one_dead(db_url, healthy_for: float):
    """After a database outage every heartbeat is old: a sweeper must first see the
    database healthy for EVALQ_WORKER_DEAD_AFTER_S before it calls others dead."""
    from workers.delivery.sweeper import Sweeper

    _beat("quiet", utcnow() - timedelta(seconds=60))
    lease = _lease()
    assert _claim(lease, "quiet", now=utcnow() - timedelta(seconds=60))[0] == "claimed"
    counts = Sweeper().sweep(healthy_for_s=healthy_for)
    assert counts["dead worker"] == 0
    with session_scope() as s:
        row = s.get(TaskLease, lease)
        assert row is not None and row.state == LeaseState.RUNNING
