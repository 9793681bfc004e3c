"""Backend selection rules of the proxy (pure logic; time is a plain variable we advance)."""

from __future__ import annotations

from ipvslb.endpoints.source import Backend
from ipvslb.proxy.balancer import Balancer

A, B, C = (Backend(f"10.0.0.{i}", 6443) for i in (1, 2, 3))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def first(bal: Balancer) -> Backend:
    return bal.candidates(1)[0].backend


def test_round_robin_order_and_distinct_candidates() -> None:
    bal = Balancer([A, B, C])
    assert [first(bal) for _ in range(6)] == [A, B, C, A, B, C]
    assert [s.backend for s in bal.candidates(3)] == [A, B, C]
    assert [s.backend for s in bal.candidates(5)] == [B, C, A]  # never more than exist


def test_ejected_backend_is_skipped_then_retried_after_cooloff() -> None:
    clock = Clock()
    bal = Balancer([A, B, C], eject_cooloff=10, clock=clock)
    state_b = bal.candidates(3)[1]
    assert bal.record_failure(state_b, "refused")
    assert B not in [first(bal) for _ in range(6)]
    clock.now += 10.1
    assert B in [first(bal) for _ in range(3)]
    bal.record_success(state_b)
    assert not any(s.ejected for s in bal.stats())


def test_eject_after_counts_consecutive_failures() -> None:
    bal = Balancer([A, B], eject_after=3)
    state = bal.candidates(1)[0]
    assert not bal.record_failure(state, "x")
    assert not bal.record_failure(state, "x")
    bal.record_success(state)
    assert not bal.record_failure(state, "x")
    assert not bal.record_failure(state, "x")
    assert bal.record_failure(state, "x")


def test_ejected_backends_come_last_and_all_ejected_still_yields_candidates() -> None:
    clock = Clock()
    bal = Balancer([A, B], clock=clock)
    a, b = bal.candidates(2)
    bal.record_failure(a, "refused")
    assert [s.backend for s in bal.candidates(2)] == [B, A]
    bal.record_failure(b, "refused")
    assert {s.backend for s in bal.candidates(2)} == {A, B}  # fail open rather than refuse


def test_update_reports_added_and_removed_and_keeps_busy_removed_state() -> None:
    bal = Balancer([A, B])
    state_a = bal.candidates(1)[0]
    state_a.connections.add(object())
    added, removed = bal.update([B, C])
    assert [s.backend for s in added] == [C]
    assert [s.backend for s in removed] == [A]
    assert bal.current == [B, C]
    assert {s.backend for s in bal.stats()} == {A, B, C}  # A still carries a connection
    state_a.connections.clear()
    bal.forget_if_idle(state_a)
    assert {s.backend for s in bal.stats()} == {B, C}


def test_readded_backend_starts_fresh() -> None:
    bal = Balancer([A, B])
    state_a = bal.candidates(1)[0]
    state_a.connections.add(object())
    bal.record_failure(state_a, "refused")
    bal.update([B])
    added, _ = bal.update([A, B])
    assert added == [state_a] and not state_a.removed and not state_a.ejected(1e12)


def test_update_with_the_same_set_keeps_the_rotation() -> None:
    bal = Balancer([A, B, C])
    assert first(bal) == A
    assert bal.update([C, B, A]) == ([], [])
    assert [first(bal) for _ in range(3)] == [B, C, A]
