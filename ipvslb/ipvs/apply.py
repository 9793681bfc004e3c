"""Bring the kernel's IPVS table to a desired state with the fewest changes.

An :class:`Applier` keeps what it last read or applied (``known``), so applying the same or
a slightly changed table sends only the differences: nothing when nothing changed, one
message for one changed real server. Changes go out in batches (hundreds per write).

Removed real servers are drained like kube-proxy does: their weight is set to 0 (no new
connections) and they are deleted once their active and inactive connection counts reach
zero, or when ``drain_timeout`` has passed; a real server with no connections is deleted at
once. Call :meth:`Applier.apply` again (e.g. every few seconds) while ``draining`` is not
empty. ``drain=False`` deletes at once.
"""

from __future__ import annotations

import itertools
import operator
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ipvslb import logfmt
from ipvslb.ipvs.model import DEST_CONFIG_FIELDS, SERVICE_CONFIG_FIELDS, Dest, Service
from ipvslb.ipvs.netlink import (
    CMD_DEL_DEST,
    CMD_DEL_SERVICE,
    CMD_NEW_DEST,
    CMD_NEW_SERVICE,
    CMD_SET_DEST,
    CMD_SET_SERVICE,
    IPVS,
    Request,
    dest_request,
    service_request,
)
from ipvslb.ipvs.read import read_table

log = logfmt.get("ipvs")

Key = tuple[object, ...]  # Service[:5]: family, protocol, address, port, fwmark
DestKey = tuple[object, ...]  # Dest[:3]: address, port, family

_service_key = operator.itemgetter(slice(0, 5))
_dest_key = operator.itemgetter(slice(0, 3))


@dataclass
class ApplyResult:
    """What one apply did. ``messages`` counts the change messages sent to the kernel."""

    services_added: int = 0
    services_edited: int = 0
    services_deleted: int = 0
    dests_added: int = 0
    dests_edited: int = 0
    dests_deleted: int = 0
    dests_drain_started: int = 0
    messages: int = 0
    errors: list[str] = field(default_factory=list)
    draining: list[tuple[Service, Dest]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.messages > 0


class _Plan:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.what: list[str] = []
        self.result = ApplyResult()

    def add(self, request: Request, what: str, counter: str) -> None:
        self.requests.append(request)
        self.what.append(what)
        setattr(self.result, counter, getattr(self.result, counter) + 1)


class Applier:
    """Applies desired IPVS tables through ``ipvs`` (one network namespace)."""

    def __init__(self, ipvs: IPVS, *, drain: bool = True, drain_timeout: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ipvs = ipvs
        self.drain = drain
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.known: dict[Key, Service] | None = None
        self._drain_deadline: dict[tuple[Key, DestKey], float] = {}

    @property
    def draining(self) -> list[tuple[Key, DestKey]]:
        return list(self._drain_deadline)

    def refresh(self) -> dict[Key, Service]:
        """Read the kernel's table (one dump per service) and remember it."""
        self.known = {_service_key(s): s for s in read_table(self.ipvs, info=False).services}
        return self.known

    # -- whole tables

    def apply(self, desired: Iterable[Service], *, prune: bool | Callable[[Service], bool] = True,
              refresh: bool = False) -> ApplyResult:
        """Make the table equal ``desired``.

        ``prune``: delete services that are not desired (True: all of them; a predicate: those
        it accepts, e.g. only ipvslb's own VIP:port services; False: none).
        ``refresh``: re-read the kernel first (otherwise the last read/applied state is used;
        the first call always reads).
        """
        services = list(desired)
        wanted: dict[Key, Service] = dict(zip(map(_service_key, services), services,
                                              strict=True))
        if len(wanted) != len(services):
            seen: set[Key] = set()
            for svc in services:
                if _service_key(svc) in seen:
                    raise ValueError(f"service {svc.describe()} is listed twice")
                seen.add(_service_key(svc))
        known = self.refresh() if refresh or self.known is None else self.known
        plan = _Plan()
        pending: list[tuple[Service, Service | None]] = []
        if prune:
            for key, cur in known.items():
                if key not in wanted and (prune is True or prune(cur)):  # type: ignore[operator]
                    plan.add(service_request(CMD_DEL_SERVICE, cur), f"delete {cur.describe()}",
                             "services_deleted")
                    pending.append((cur, None))
        # Services that are the very objects applied last time need no look: this test runs
        # in C, so a 10,000-service table with one change costs little before the diff.
        values = list(wanted.values())
        same = map(operator.is_, map(known.get, wanted.keys()), values)
        for svc in itertools.compress(values, map(operator.not_, same)):
            self._plan_service(plan, known.get(_service_key(svc)), svc, pending)
        return self._send(plan, pending)

    def update(self, services: Iterable[Service]) -> ApplyResult:
        """Apply just these services (add or change them and their real servers); leave every
        other service alone. Costs O(len(services)), not O(table)."""
        known = self.known if self.known is not None else self.refresh()
        plan = _Plan()
        pending: list[tuple[Service, Service | None]] = []
        for svc in services:
            cur = known.get(_service_key(svc))
            if cur is not svc:
                self._plan_service(plan, cur, svc, pending)
        return self._send(plan, pending)

    def delete(self, services: Iterable[Service]) -> ApplyResult:
        """Delete these services (found by identity: protocol, address, port or fwmark)."""
        known = self.known if self.known is not None else self.refresh()
        plan = _Plan()
        pending: list[tuple[Service, Service | None]] = []
        for svc in services:
            cur = known.get(_service_key(svc))
            if cur is not None:
                plan.add(service_request(CMD_DEL_SERVICE, cur), f"delete {cur.describe()}",
                         "services_deleted")
                pending.append((cur, None))
        return self._send(plan, pending)

    # -- planning

    def _plan_service(self, plan: _Plan, cur: Service | None, svc: Service,
                      pending: list[tuple[Service, Service | None]]) -> None:
        if cur is None:
            plan.add(service_request(CMD_NEW_SERVICE, svc), f"add {svc.describe()}",
                     "services_added")
            for d in svc.dests:
                plan.add(dest_request(CMD_NEW_DEST, svc, d),
                         f"add {d.address}:{d.port} to {svc.describe()}", "dests_added")
            pending.append((svc, svc))
            return
        if cur[:SERVICE_CONFIG_FIELDS] != svc[:SERVICE_CONFIG_FIELDS]:
            plan.add(service_request(CMD_SET_SERVICE, svc), f"edit {svc.describe()}",
                     "services_edited")
        elif len(cur.dests) == len(svc.dests) and \
                {d[:DEST_CONFIG_FIELDS] for d in cur.dests} == \
                {d[:DEST_CONFIG_FIELDS] for d in svc.dests}:
            pending.append((svc, svc))  # equal (e.g. just read from the kernel): remember
            return  # the desired object, so the next apply skips it by identity
        effective = self._plan_dests(plan, cur, svc)
        pending.append((svc, effective))

    def _plan_dests(self, plan: _Plan, cur: Service, svc: Service) -> Service:
        """Plan the real-server changes; return the service as it will then be."""
        key = _service_key(svc)
        wanted: dict[DestKey, Dest] = {}
        for d in svc.dests:
            dkey = _dest_key(d)
            if dkey in wanted:
                raise ValueError(f"real server {d.address}:{d.port} is listed twice in "
                                 f"{svc.describe()}")
            wanted[dkey] = d
        have = {_dest_key(d): d for d in cur.dests}
        kept: list[Dest] = []  # drained real servers that stay for now
        removed = [d for k, d in have.items() if k not in wanted]
        fresh: dict[DestKey, Dest] = {}
        if removed and self.drain:
            # the connection counts in `known` may be old: read this service's servers again
            fresh = {_dest_key(d): d for d in self.ipvs.dests(svc)}
        now = self.clock()
        for d in removed:
            dkey = _dest_key(d)
            what = f"{d.address}:{d.port} in {svc.describe()}"
            live = fresh.get(dkey)
            if live is None and self.drain:
                continue  # already gone
            if not self.drain or live is None or live.active_conns + live.inactive_conns == 0:
                plan.add(dest_request(CMD_DEL_DEST, svc, d), f"delete {what}", "dests_deleted")
                self._drain_deadline.pop((key, dkey), None)
                continue
            deadline = self._drain_deadline.get((key, dkey))
            if deadline is not None and now >= deadline:
                log.info("drain time is up; deleting real server", extra={"server": what})
                plan.add(dest_request(CMD_DEL_DEST, svc, d), f"delete {what}", "dests_deleted")
                del self._drain_deadline[(key, dkey)]
                continue
            if deadline is None:
                self._drain_deadline[(key, dkey)] = now + self.drain_timeout
            if live.weight != 0:
                plan.add(dest_request(CMD_SET_DEST, svc, live._replace(weight=0)),
                         f"drain {what}", "dests_drain_started")
            kept.append(live._replace(weight=0))
            plan.result.draining.append((svc, live))
        for dkey, d in wanted.items():
            old = have.get(dkey)
            self._drain_deadline.pop((key, dkey), None)
            if old is None:
                plan.add(dest_request(CMD_NEW_DEST, svc, d),
                         f"add {d.address}:{d.port} to {svc.describe()}", "dests_added")
            elif old[:DEST_CONFIG_FIELDS] != d[:DEST_CONFIG_FIELDS]:
                plan.add(dest_request(CMD_SET_DEST, svc, d),
                         f"edit {d.address}:{d.port} in {svc.describe()}", "dests_edited")
        return svc._replace(dests=svc.dests + tuple(kept)) if kept else svc

    # -- sending

    def _send(self, plan: _Plan, pending: list[tuple[Service, Service | None]]
              ) -> ApplyResult:
        result = plan.result
        try:
            errors = self.ipvs.run(plan.requests) if plan.requests else []
        except BaseException:
            self.known = None  # some changes may have been made: read the table next time
            raise
        result.messages = len(plan.requests)
        for code, what in zip(errors, plan.what, strict=True):
            if code:
                result.errors.append(f"{what}: {os.strerror(code)}")
        known = self.known
        if result.errors or known is None:
            self.known = None  # unsure what the kernel has now: read it next time
            for message in result.errors:
                log.warning("IPVS change refused", extra={"error": message})
            return result
        for svc, effective in pending:
            key = _service_key(svc)
            if effective is None:
                known.pop(key, None)
                self._forget_drains(key)
            else:
                known[key] = effective
        if result.messages:
            log.info("IPVS table changed", extra={
                "services_added": result.services_added,
                "services_edited": result.services_edited,
                "services_deleted": result.services_deleted,
                "servers_added": result.dests_added, "servers_edited": result.dests_edited,
                "servers_deleted": result.dests_deleted,
                "servers_draining": len(self._drain_deadline), "messages": result.messages})
        return result

    def _forget_drains(self, key: Key) -> None:
        for k in [k for k in self._drain_deadline if k[0] == key]:
            del self._drain_deadline[k]


def as_mapping(services: Iterable[Service]) -> Mapping[Key, Service]:
    return {_service_key(s): s for s in services}
