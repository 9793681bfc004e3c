"""Random IPVS tables as `ipvsadm -R` input, for the compatibility tests.

Tables mix TCP/UDP/SCTP and firewall-mark services, IPv4 and IPv6, every scheduler the
kernel ships, persistence with and without netmasks, scheduler flags, one-packet scheduling,
the SIP persistence engine, all forwarding methods (incl. GUE/GRE tunnels and tunnels to the
other address family), weights and thresholds. Addresses are spread over the whole space so
ipvsadm's wrapping comparison is exercised, with clusters so equal prefixes occur too. Every
line is valid for ipvsadm and the kernel (a rejected line makes the test fail, not skip).
"""

from __future__ import annotations

import ipaddress
import os
import random
from dataclasses import dataclass, field

FALLBACK_SCHEDULERS = (
    "rr",
    "wrr",
    "lc",
    "wlc",
    "lblc",
    "lblcr",
    "dh",
    "sh",
    "sed",
    "nq",
    "fo",
    "ovf",
    "mh",
)


def kernel_schedulers() -> tuple[str, ...]:
    """The schedulers whose modules the running kernel ships (ip_vs_<name>.ko)."""
    release = os.uname().release
    directory = f"/lib/modules/{release}/kernel/net/netfilter/ipvs"
    try:
        names = sorted(
            f.split(".")[0].removeprefix("ip_vs_")
            for f in os.listdir(directory)
            if f.startswith("ip_vs_") and f.split(".")[0] not in ("ip_vs_ftp", "ip_vs_pe_sip")
        )
    except FileNotFoundError:
        return FALLBACK_SCHEDULERS
    return tuple(names) or FALLBACK_SCHEDULERS


@dataclass
class RandomService:
    option: str  # "-t" / "-u" / "--sctp-service" / "-f"
    target: str  # "10.0.0.1:80", "[fd00::1]:53", "7", "7 -6"
    family: int  # 4 or 6
    fwmark: int
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def selector(self) -> list[str]:
        if self.option == "-f":
            return ["-f", *self.target.split()]
        return [self.option, self.target]


class TableGenerator:
    def __init__(
        self, rng: random.Random, schedulers: tuple[str, ...], pe_sip: bool = True
    ) -> None:
        self.rng = rng
        self.schedulers = schedulers
        self.pe_sip = pe_sip
        self.clusters4 = [rng.randrange(1 << 32) & 0xFFFFFF00 for _ in range(3)]

    # -- addresses: unicast only (the kernel refuses other real servers)

    def ipv4(self) -> str:
        rng = self.rng
        while True:
            if rng.random() < 0.4:
                value = rng.choice(self.clusters4) | rng.randrange(1, 255)
            else:
                value = rng.randrange(1 << 32)
            first = value >> 24
            if 1 <= first <= 223 and first != 127 and value & 0xFF not in (0, 255):
                return str(ipaddress.IPv4Address(value))

    def ipv6(self) -> str:
        rng = self.rng
        prefix = rng.choice(
            (0x20010DB8, 0xFD123456, 0x80000001, 0xC0000000, 0x2A001450, 0xE000FFFF)
        )
        if rng.random() < 0.5:
            low = rng.randrange(1, 0xFFFF)  # short form: prefix::N
        else:
            low = rng.randrange(1, 1 << 96)
        return str(ipaddress.IPv6Address((prefix << 96) | low))

    def address(self, family: int) -> str:
        return self.ipv6() if family == 6 else self.ipv4()

    @staticmethod
    def hostport(family: int, address: str, port: int) -> str:
        return f"[{address}]:{port}" if family == 6 else f"{address}:{port}"

    # -- a table

    def table(self, max_services: int = 10, max_dests: int = 5) -> list[RandomService]:
        rng = self.rng
        services: list[RandomService] = []
        keys: set[tuple[object, ...]] = set()
        for _ in range(rng.randrange(0, max_services + 1)):
            svc = self.service(rng.randrange(0, max_dests + 1))
            key = (
                svc.option,
                svc.target.split()[0] if svc.option != "-f" else svc.target,
                svc.family,
            )
            if key in keys:
                continue
            keys.add(key)
            services.append(svc)
        return services

    def service(self, n_dests: int) -> RandomService:
        rng = self.rng
        family = 6 if rng.random() < 0.35 else 4
        persistent = rng.random() < 0.4
        kind = rng.random()
        if kind < 0.2:
            fwmark = rng.choice(
                (rng.randrange(1, 100), rng.randrange(1, 1 << 32), rng.randrange(1 << 31, 1 << 32))
            )
            option, port, target = "-f", 0, f"{fwmark}" + (" -6" if family == 6 else "")
            proto = "fwmark"
        else:
            option = rng.choice(("-t", "-t", "-u", "--sctp-service"))
            proto = {"-t": "tcp", "-u": "udp", "--sctp-service": "sctp"}[option]
            fwmark = 0
            port = rng.choice((rng.randrange(1, 65536), 80, 443, 6443, 53))
            if persistent and rng.random() < 0.15:
                port = 0  # a port-zero service must be persistent
            address = self.address(family)
            target = self.hostport(family, address, port)
        sched = rng.choice(self.schedulers)
        parts = ["-A", option, target, "-s", sched]
        if persistent:
            if rng.random() < 0.3:
                parts.append("-p")
            else:
                parts += [
                    "-p",
                    str(rng.choice((1, 30, 360, 3600, 2678400, rng.randrange(1, 2678401)))),
                ]
        if rng.random() < 0.3:
            if family == 6:
                parts += ["-M", str(rng.randrange(1, 129))]
            elif rng.random() < 0.8:
                prefix = rng.randrange(0, 33)
                parts += ["-M", str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)]
            else:
                parts += ["-M", str(ipaddress.IPv4Address(rng.randrange(1 << 32)))]
        if proto in ("udp", "fwmark") and rng.random() < 0.3:
            parts.append("-o")
        if self.pe_sip and proto == "udp" and persistent and rng.random() < 0.2:
            parts += ["--pe", "sip"]
        flags = self.sched_flags(sched)
        if flags:
            parts += ["-b", ",".join(flags)]
        svc = RandomService(option, target, family, fwmark, port, [" ".join(parts)])
        seen: set[tuple[int, str, int]] = set()
        for _ in range(n_dests):
            line = self.dest(svc, seen)
            if line:
                svc.lines.append(line)
        return svc

    def sched_flags(self, sched: str) -> list[str]:
        rng = self.rng
        if rng.random() < 0.6:
            return []
        names = ["flag-1", "flag-2", "flag-3"]
        if sched in ("sh", "mh"):
            names += [f"{sched}-fallback", f"{sched}-port"]
        return rng.sample(names, rng.randrange(1, 3))

    def dest(self, svc: RandomService, seen: set[tuple[int, str, int]]) -> str | None:
        rng = self.rng
        method = rng.choice(("-g", "-m", "-i"))
        family = svc.family
        if method == "-i" and rng.random() < 0.25:
            family = 10 - family  # a tunnel may lead to the other address family
        address = self.address(family)
        port = rng.choice((svc.port, rng.randrange(0, 65536)))
        if svc.option != "-f" and method in ("-g", "-i"):
            port = svc.port  # ipvsadm forces the service port for DR and tunnels
        key = (family, address, port)
        if key in seen:
            return None
        seen.add(key)
        parts = ["-a", svc.option, svc.target, "-r", self.hostport(family, address, port), method]
        if rng.random() < 0.7:
            parts += ["-w", str(rng.choice((0, 1, 2, 10, 100, 65535, rng.randrange(65536))))]
        if rng.random() < 0.3:
            upper = rng.choice((0, 1, 100, 2147483647, rng.randrange(1 << 31)))
            parts += ["-x", str(upper)]
            if rng.random() < 0.7:
                parts += ["-y", str(rng.randrange(0, upper + 1))]
        if method == "-i":
            kind = rng.choice(("default", "ipip", "gue", "gre"))
            if kind == "ipip":
                parts += ["--tun-type", "ipip"]
            elif kind == "gue":
                parts += ["--tun-type", "gue", "--tun-port", str(rng.randrange(1, 65536))]
                csum = rng.choice(("", "--tun-nocsum", "--tun-csum", "--tun-remcsum"))
                if csum:
                    parts.append(csum)
            elif kind == "gre":
                parts += ["--tun-type", "gre"]
                csum = rng.choice(("", "--tun-nocsum", "--tun-csum"))
                if csum:
                    parts.append(csum)
        return " ".join(parts)


def restore_input(services: list[RandomService]) -> str:
    return "".join(line + "\n" for svc in services for line in svc.lines)
