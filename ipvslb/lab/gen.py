"""Write lab nodes' ipvslb configs from the lab topology (used by the Vagrant provisioning).

    python -m ipvslb.lab.gen check      [--topology FILE] [selection...]
    python -m ipvslb.lab.gen render     [--topology FILE] --node NAME [options] [-o FILE]
    python -m ipvslb.lab.gen render-all [--topology FILE] --output-dir DIR [options]

Selection options (--controllers N, --workers M, --role R, --mode M) apply the same overrides
as the Vagrantfile's IPVSLB_LAB_* variables. Bad input: one line per problem on stderr,
prefixed ``error:``, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ipvslb.errors import UserError
from ipvslb.files import write_atomic
from ipvslb.lab.topology import (
    DEFAULT_INTERFACE,
    DEFAULT_TOPOLOGY,
    EndpointsFrom,
    LabMode,
    Topology,
    check_node_configs,
    render_lab,
    render_node,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ipvslb.lab.gen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--topology", default=str(DEFAULT_TOPOLOGY),
                        help="lab topology file (default: %(default)s)")
    common.add_argument("--controllers", type=int, default=None,
                        help="use only the first N controllers of the topology")
    common.add_argument("--workers", type=int, default=None,
                        help="use only the first M workers of the topology")
    common.add_argument("--role", choices=["controller", "controller+worker"], default=None,
                        help="give every controller this role (the controller+worker variant)")
    common.add_argument("--mode", choices=[m.value for m in LabMode], default=None,
                        help="override the topology's mode")
    render_opts = argparse.ArgumentParser(add_help=False)
    render_opts.add_argument("--interface", default=DEFAULT_INTERFACE,
                             help="the node's NIC on the lab network (default: %(default)s)")
    render_opts.add_argument("--endpoints", choices=[e.value for e in EndpointsFrom],
                             default=EndpointsFrom.STATIC.value,
                             help="static: the controllers' addresses; kubernetes: follow the "
                                  "apiserver through --kubeconfig (default: %(default)s)")
    render_opts.add_argument("--kubeconfig", default=None,
                             help="kubeconfig for --endpoints kubernetes (default: k0s's "
                                  "/var/lib/k0s/pki/admin.conf)")
    render_opts.add_argument("--run-dir", default=None, help="node.runDir (default: ipvslb's)")

    sub.add_parser("check", parents=[common], help="check the topology and every config")
    one = sub.add_parser("render", parents=[common, render_opts],
                         help="print (or write) one controller's config")
    one.add_argument("--node", required=True, help="controller name, e.g. ctrl-1")
    one.add_argument("-o", "--output", default=None, help="write there (mode 0600)")
    every = sub.add_parser("render-all", parents=[common, render_opts],
                           help="write <name>.yaml for every controller")
    every.add_argument("--output-dir", required=True)
    return parser


def _topology(args: argparse.Namespace) -> Topology:
    topology = Topology.load(args.topology).select(args.controllers, args.workers)
    if args.role is not None:
        topology = topology.with_role(args.role)
    if args.mode is not None:
        topology = topology.with_mode(args.mode)
    return topology


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    topology = _topology(args)
    if args.command == "check":
        check_node_configs(topology)
        print(f"ok: {args.topology}: lab {topology.name!r}, mode {topology.mode.value}, "
              f"VIP {topology.network.vip}, {len(topology.controllers)} controller(s), "
              f"{len(topology.workers)} worker(s)")
        return 0
    params = {"interface": args.interface, "endpoints": args.endpoints,
              "kubeconfig": args.kubeconfig, "run_dir": args.run_dir}
    # Whatever ipvslb would refuse is reported here, before anything is written.
    check_node_configs(topology, **params)
    if args.command == "render":
        text = render_node(topology, args.node, **params)
        if args.output:
            write_atomic(Path(args.output), text, mode=0o600)
        else:
            sys.stdout.write(text)
        return 0
    for name, path in render_lab(topology, args.output_dir, **params).items():
        print(f"{name}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except UserError as err:
        for line in err.message.splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
