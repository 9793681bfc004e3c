"""ipvsadm-identical formatting and sorting, checked on the host.

The golden outputs in ipvs_golden/ were printed by the real ipvsadm 1.31 (Debian 12) for the
table in ipvs_golden/table.restore, loaded into Debian's 6.1 kernel in the QEMU guest
(ipvs_golden/capture.py); table.json is that table as ipvslb read it. The kernel tier
compares against the live ipvsadm on hundreds of random tables; these tests keep the
formatter honest on machines without IPVS.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvslb.ipvs import format as fmt
from ipvslb.ipvs.model import AF_INET, AF_INET6, Dest, Info, Service, Stats, Timeouts

GOLDEN = Path(__file__).parent / "ipvs_golden"


def golden_table() -> tuple[list[Service], Info, Timeouts]:
    doc = json.loads((GOLDEN / "table.json").read_text())
    services = [Service._make([*s[:10], tuple(Dest._make([*d, Stats()]) for d in s[10]),
                               Stats()]) for s in doc["services"]]
    return services, Info(*doc["info"]), Timeouts(*doc["timeouts"])


OUTPUTS = json.loads((GOLDEN / "outputs.json").read_text())
FORMATS = {
    "-L -n": fmt.Format(), "-S -n": fmt.Format(rule=True),
    "-L -n --stats": fmt.Format(stats=True), "-L -n --rate": fmt.Format(rate=True),
    "-L -n --stats --exact": fmt.Format(stats=True, exact=True),
    "-L -n --thresholds": fmt.Format(thresholds=True),
    "-L -n --persistent-conn": fmt.Format(persistent_conn=True),
    "-L -n --nosort": fmt.Format(nosort=True), "-L -n --tun-info": fmt.Format(tun_info=True),
}


@pytest.mark.parametrize("options", sorted(FORMATS))
def test_golden_outputs_of_ipvsadm(options: str) -> None:
    services, info, _ = golden_table()
    assert fmt.list_all(services, info, FORMATS[options]) == OUTPUTS[options]


def test_golden_timeouts() -> None:
    _, _, timeouts = golden_table()
    assert fmt.timeouts_text(timeouts) == OUTPUTS["-L -n --timeout"]


def test_golden_table_has_the_quirks() -> None:
    text = OUTPUTS["-L -n"]
    assert "FWM  -1294967296 dh" in text  # fwmarks printed with %d
    assert "TCP  8.8.8.8:53 sh ()\n" in text  # sh with only flag-3
    assert "  -> 10.3.3.3:0                   Route   1      0          0         \n" in text
    lines = text.splitlines()
    # signed 32-bit comparison: 192.168.7.7 and 200.1.1.1 sort before 10.1.0.1
    assert lines.index("  -> 192.168.7.7:80               Tunnel  0      0          0         ") \
        < lines.index("  -> 10.1.0.1:80                  Route   3      0          0         ")


# --- sorting: the fast key sort must give exactly what glibc's merge sort gives -----------

def _services_cmp(a: Service, b: Service) -> int:
    return fmt._cmp_services(fmt._service_key(a), fmt._service_key(b))


def _dests_cmp(a: Dest, b: Dest) -> int:
    return fmt._cmp_dests(fmt._dest_key(a), fmt._dest_key(b))


v4 = st.one_of(st.integers(0x01000000, 0xDFFFFFFF),
               st.sampled_from([0x0A000001, 0x0A000002, 0xC0A80001, 0x7F000001, 0xAC100001]))
v6 = st.one_of(st.integers(1, (1 << 128) - 1),
               st.sampled_from([0x20010DB8 << 96 | 1, 0x80000000 << 96 | 1, 0xFD00 << 112 | 5]))


@st.composite
def services(draw: st.DrawFn) -> Service:
    kind = draw(st.sampled_from(["v4", "v6", "fwm", "fwm6"]))
    if kind.startswith("fwm"):
        mark = draw(st.one_of(st.integers(1, 100), st.integers(1, (1 << 32) - 1)))
        return Service(AF_INET6 if kind == "fwm6" else AF_INET, 0, "", 0, mark)
    proto = draw(st.sampled_from([6, 17, 132]))
    port = draw(st.integers(0, 65535))
    if kind == "v4":
        return Service(AF_INET, proto, str(ipaddress.IPv4Address(draw(v4))), port)
    return Service(AF_INET6, proto, str(ipaddress.IPv6Address(draw(v6))), port)


@st.composite
def dests(draw: st.DrawFn, mixed: bool) -> Dest:
    port = draw(st.integers(0, 65535))
    if mixed and draw(st.booleans()):
        return Dest(str(ipaddress.IPv6Address(draw(v6))), port, AF_INET6)
    return Dest(str(ipaddress.IPv4Address(draw(v4))), port, AF_INET)


def _unique(items: list, key) -> list:  # type: ignore[no-untyped-def,type-arg]
    seen: dict[object, object] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(services(), max_size=40))
def test_service_sort_equals_glibc_merge_sort(items: list[Service]) -> None:
    items = _unique(items, lambda s: s.key)
    assert fmt.sort_services(items) == fmt.merge_sort(items, _services_cmp)


@settings(max_examples=300, deadline=None)
@given(st.booleans().flatmap(lambda mixed: st.lists(dests(mixed), max_size=30)))
def test_dest_sort_equals_glibc_merge_sort(items: list[Dest]) -> None:
    items = _unique(items, lambda d: d.key)
    assert fmt.sort_dests(items) == fmt.merge_sort(items, _dests_cmp)


def test_signed_comparison_puts_high_addresses_first() -> None:
    svcs = [Service(AF_INET, 6, "10.0.0.1", 80), Service(AF_INET, 6, "192.168.0.1", 80)]
    assert [s.address for s in fmt.sort_services(svcs)] == ["192.168.0.1", "10.0.0.1"]
    # an inconsistent triple: a<b, b<c, c<a under wrapping subtraction
    three = [Service(AF_INET, 6, a, 1) for a in ("1.0.0.1", "100.0.0.1", "200.0.0.1")]
    assert _services_cmp(three[0], three[1]) < 0 and _services_cmp(three[1], three[2]) < 0
    assert _services_cmp(three[2], three[0]) < 0
    assert [s.address for s in fmt.sort_services(three)] == \
        [s.address for s in fmt.merge_sort(three, _services_cmp)]
    assert [s.address for s in fmt.sort_services(list(reversed(three)))] == \
        [s.address for s in fmt.merge_sort(list(reversed(three)), _services_cmp)]


def test_merge_sort_is_glibc_msort() -> None:
    """Top-down, left half n/2, stable, left wins ties."""
    calls: list[tuple[int, int]] = []

    def cmp(a: tuple[int, int], b: tuple[int, int]) -> int:
        calls.append((a[1], b[1]))
        return a[0] - b[0]

    items = [(2, 0), (1, 1), (2, 2), (0, 3), (1, 4)]
    assert fmt.merge_sort(items, cmp) == [(0, 3), (1, 1), (1, 4), (2, 0), (2, 2)]
    # glibc: sort [0:2] -> cmp(0,1); sort [2:5] -> [2] | [3,4] -> cmp(3,4), merge cmp(2,3)...
    assert calls[:2] == [(0, 1), (3, 4)]


# --- numbers, connections, JSON ----------------------------------------------------------

@pytest.mark.parametrize("value, exact, text", [
    (0, False, "        0"), (99_999_999, False, " 99999999"), (100_000_000, False, "  100000K"),
    (999_999_999, False, "  999999K"), (1_000_000_000, False, "    1000M"),
    (99_999_999_999, False, "   99999M"), (100_000_000_000, False, "     100G"),
    (100_000_000_000_000, False, "     100T"), (12, True, "       12"),
    (123_456_789, True, " 123456789"), (12_345_678_901, True, " 12345678901"),
])
def test_largenum(value: int, exact: bool, text: str) -> None:
    assert fmt._largenum(value, exact) == text


def test_dest_counters_are_32_bit_like_libipvs() -> None:
    svc = Service(AF_INET, 6, "10.0.0.1", 80, stats=Stats(conns=(1 << 32) + 5),
                  dests=(Dest("10.0.0.2", 80, stats=Stats(conns=(1 << 32) + 5,
                                                          inbytes=(1 << 32) + 5)),))
    text = fmt.service_text(svc, fmt.Format(stats=True, exact=True))
    first, second = text.splitlines()
    assert first.split()[2] == str((1 << 32) + 5)  # services keep 64 bits
    assert second.split()[2] == "5" and second.split()[5] == str((1 << 32) + 5)


PROC_CONN = """\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A580004 A2B6 0A580064 192B 0A580003 192B ESTABLISHED     899
TCP 0A580004 0000 0A580064 192B 0A580003 192B NONE             59
UDP 2001:0db8:0000:0000:0000:0000:0000:0001 0035 2001:0db8:0000:0000:0000:0000:0000:0100 0035 \
fd00:0000:0000:0000:0000:0000:0000:0010 0035 UDP               5 sip 1234@host
"""


def test_connections_from_proc() -> None:
    assert fmt.connections_text(PROC_CONN) == (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination\n"
        "TCP 14:59  ESTABLISHED 10.88.0.4:41654    10.88.0.100:6443   10.88.0.3:6443\n"
        "TCP 00:59  NONE        10.88.0.4:0        10.88.0.100:6443   10.88.0.3:6443\n"
        "UDP 00:05  UDP         [2001:db8::1]:53   [2001:db8::100]:53 [fd00::10]:53\n")
    with_pe = fmt.connections_text(PROC_CONN, persistent_conn=True).splitlines()
    assert with_pe[1] == ("pro expire state       source             virtual            "
                          "destination        pe name          pe_data")
    assert with_pe[-1] == ("UDP 00:05  UDP         [2001:db8::1]:53   [2001:db8::100]:53 "
                           "[fd00::10]:53    sip                1234@host")


def test_json_fields() -> None:
    services, info, timeouts = golden_table()
    doc = json.loads(fmt.to_json(services, info, timeouts=timeouts))
    assert doc["version"] == "1.2.1" and doc["timeouts"] == {"tcp": 900, "tcp_fin": 120,
                                                             "udp": 300}
    first = doc["services"][0]
    assert set(first) == {"protocol", "address", "port", "fwmark", "family", "scheduler",
                          "scheduler_flags", "persistent", "persistence_timeout", "netmask",
                          "persistence_engine", "one_packet", "stats", "real_servers"}
    assert first["fwmark"] == 3000000000 and first["address"] is None
    sip = next(s for s in doc["services"] if s["persistence_engine"] == "sip")
    assert (sip["family"], sip["netmask"], sip["one_packet"], sip["persistence_timeout"]) == \
        ("ipv6", 64, True, 30)
    gue = next(d for s in doc["services"] for d in s["real_servers"]
               if d["tunnel"] and d["tunnel"]["type"] == "gue")
    assert gue["tunnel"] == {"type": "gue", "port": 6080, "checksum": "remcsum"}
    order = [(s["address"], s["port"]) for s in doc["services"]]
    assert order == [(s.address or None, s.port if not s.fwmark else None)
                     for s in fmt.sort_services(services)]
