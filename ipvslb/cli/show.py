"""`ipvslb show`: the IPVS table exactly as `ipvsadm -L -n` prints it, or as JSON."""

from __future__ import annotations

import socket
import sys

import click

from ipvslb.config.scalars import parse_uint, shown
from ipvslb.errors import SystemStateError, UserError


def parse_service_address(option: str, text: str, protocol: int) -> tuple[int, str, int]:
    """ipvsadm's ``ADDR[:PORT]`` / ``[ADDR6]:PORT`` / ``ADDR6`` -> (family, address, port)."""
    from ipvslb.ipvs.model import AF_INET, AF_INET6

    bad = UserError(f"{option} {shown(text)}: expected ADDRESS:PORT, [IPv6]:PORT or an address, "
                    "e.g. 10.0.0.1:6443 or [fd00::1]:6443")
    port_text: str | None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise bad
        port_text = rest[1:]
    elif _is_ipv6(text):
        host, port_text = text, None
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    else:
        host, port_text = text, None
    family = AF_INET
    for fam in (AF_INET6, AF_INET):
        try:
            address = socket.inet_ntop(fam, socket.inet_pton(fam, host))
            family = fam
            break
        except OSError:
            continue
    else:
        raise bad
    port = 0
    if port_text is not None:
        number = parse_uint(port_text, 0, 65535)
        if number is not None:
            port = number
        else:
            try:
                proto = {6: "tcp", 17: "udp", 132: "sctp"}[protocol]
                port = socket.getservbyname(port_text, proto)
            except (OSError, KeyError):
                raise bad from None
    return family, address, port


def _is_ipv6(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return False
    return True


@click.command("show")
@click.option("--netns", metavar="NAME", help="Network namespace (as in `ip netns`).")
@click.option("-n", "--numeric", is_flag=True, help="Accepted for ipvsadm compatibility; "
              "output is always numeric.")
@click.option("-S", "--save", "save", is_flag=True, help="Rules as `ipvsadm -S -n` prints them.")
@click.option("--stats", is_flag=True, help="Counters (like ipvsadm --stats).")
@click.option("--rate", is_flag=True, help="Rates (like ipvsadm --rate).")
@click.option("-X", "--exact", is_flag=True, help="Exact numbers with --stats/--rate.")
@click.option("--thresholds", is_flag=True, help="Upper/lower connection thresholds.")
@click.option("--persistent-conn", is_flag=True, help="Persistent connection counters.")
@click.option("--tun-info", is_flag=True, help="Tunnel settings of real servers.")
@click.option("--nosort", is_flag=True, help="Kernel order instead of ipvsadm's sort.")
@click.option("--sort", is_flag=True, hidden=True)
@click.option("--timeout", "timeouts", is_flag=True, help="TCP/TCP-FIN/UDP timeouts.")
@click.option("-c", "--connection", is_flag=True, help="Connection entries.")
@click.option("--daemon", is_flag=True, help="Connection-sync daemons.")
@click.option("-t", "--tcp-service", metavar="ADDR:PORT", help="Only this TCP service.")
@click.option("-u", "--udp-service", metavar="ADDR:PORT", help="Only this UDP service.")
@click.option("--sctp-service", metavar="ADDR:PORT", help="Only this SCTP service.")
@click.option("-f", "--fwmark-service", metavar="MARK", help="Only this firewall-mark service.")
@click.option("-6", "--ipv6", is_flag=True, help="With -f: the IPv6 firewall-mark service.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with counters).")
def show(netns: str | None, numeric: bool, save: bool, stats: bool, rate: bool, exact: bool,
         thresholds: bool, persistent_conn: bool, tun_info: bool, nosort: bool, sort: bool,
         timeouts: bool, connection: bool, daemon: bool, tcp_service: str | None,
         udp_service: str | None, sctp_service: str | None, fwmark_service: str | None,
         ipv6: bool, as_json: bool) -> None:
    """Print the IPVS table exactly as `ipvsadm -L -n` does (same options).

    \b
    ipvslb show                      = ipvsadm -L -n
    ipvslb show --save               = ipvsadm -S -n
    ipvslb show --stats --exact      = ipvsadm -L -n --stats --exact
    ipvslb show -t 10.0.0.1:6443     = ipvsadm -L -n -t 10.0.0.1:6443
    ipvslb show -c                   = ipvsadm -L -n -c
    """
    text = render(netns=netns, save=save, stats=stats, rate=rate, exact=exact,
                  thresholds=thresholds, persistent_conn=persistent_conn, tun_info=tun_info,
                  nosort=nosort, timeouts=timeouts, connection=connection, daemon=daemon,
                  tcp_service=tcp_service, udp_service=udp_service,
                  sctp_service=sctp_service, fwmark_service=fwmark_service, ipv6=ipv6,
                  as_json=as_json)
    sys.stdout.write(text)
    sys.stdout.flush()


def render(*, netns: str | None = None, save: bool = False, stats: bool = False,
           rate: bool = False, exact: bool = False, thresholds: bool = False,
           persistent_conn: bool = False, tun_info: bool = False, nosort: bool = False,
           timeouts: bool = False, connection: bool = False, daemon: bool = False,
           tcp_service: str | None = None, udp_service: str | None = None,
           sctp_service: str | None = None, fwmark_service: str | None = None,
           ipv6: bool = False, as_json: bool = False) -> str:
    """What `ipvslb show` prints for these options (the CLI's work, callable in-process)."""
    from ipvslb.ipvs import format as fmt_mod
    from ipvslb.ipvs.model import AF_INET, AF_INET6, SCTP, TCP, UDP, Service
    from ipvslb.ipvs.netlink import IPVS
    from ipvslb.ipvs.read import read_connections, read_service, read_table

    selectors = [(name, value, proto) for name, value, proto in (
        ("-t", tcp_service, TCP), ("-u", udp_service, UDP),
        ("--sctp-service", sctp_service, SCTP), ("-f", fwmark_service, 0)) if value is not None]
    if len(selectors) > 1:
        raise UserError("give at most one service (-t, -u, --sctp-service or -f)")
    exclusive = [n for n, on in (("-c", connection), ("a service", bool(selectors)),
                                 ("--timeout", timeouts), ("--daemon", daemon)) if on]
    if len(exclusive) > 1:
        raise UserError(f"{exclusive[0]} and {exclusive[1]} cannot be combined")
    if (connection or timeouts or daemon) and (stats or rate or thresholds):
        raise UserError("-c, --timeout and --daemon cannot be combined with --stats, --rate "
                        "or --thresholds")
    if (timeouts or daemon) and persistent_conn:
        raise UserError("--timeout and --daemon cannot be combined with --persistent-conn")
    if save and any((stats, rate, exact, thresholds, persistent_conn, tun_info, nosort,
                     timeouts, connection, daemon, selectors, as_json)):
        raise UserError("--save takes no other option (ipvsadm -S -n prints the whole table)")
    if as_json and any((stats, rate, exact, thresholds, persistent_conn, tun_info,
                        connection, daemon)):
        raise UserError("--json always includes counters and connection numbers; combine it "
                        "only with --nosort, --timeout, --netns or a service (-t/-u/-f)")
    if ipv6 and fwmark_service is None:
        raise UserError("-6 selects the IPv6 firewall-mark service; use it with -f MARK")

    key: Service | None = None
    if selectors:
        name, value, proto = selectors[0]
        assert value is not None
        if proto == 0:
            mark = parse_uint(value, 1, 0xFFFFFFFF)
            if mark is None:
                raise UserError(f"-f {shown(value)}: the firewall mark must be 1..4294967295")
            key = Service(AF_INET6 if ipv6 else AF_INET, 0, "", 0, mark)
        else:
            family, address, port = parse_service_address(name, value, proto)
            key = Service(family, proto, address, port)

    fmt = fmt_mod.Format(rule=save, stats=stats, rate=rate, thresholds=thresholds,
                         persistent_conn=persistent_conn, nosort=nosort, exact=exact,
                         tun_info=tun_info)
    with IPVS(netns) as ipvs:
        if connection:
            return fmt_mod.connections_text(read_connections(netns), persistent_conn)
        if timeouts and not as_json:
            return fmt_mod.timeouts_text(ipvs.timeouts())
        if daemon:
            return fmt_mod.daemons_text(ipvs.daemons())
        want_stats = stats or rate or as_json
        if key is not None:
            svc = read_service(ipvs, key, want_stats)
            if svc is None:
                raise SystemStateError(f"no such service: {key.describe()}")
            if as_json:
                return fmt_mod.to_json([svc], ipvs.info(), nosort,
                                       ipvs.timeouts() if timeouts else None)
            return fmt_mod.list_service(svc, fmt)
        table = read_table(ipvs, want_stats, info=not save)
        if as_json:
            return fmt_mod.to_json(table.services, table.info, nosort,
                                   ipvs.timeouts() if timeouts else None)
        return fmt_mod.list_all(table.services, table.info, fmt)
