"""``python -m hermes service | node | shell``: the command line."""
from __future__ import annotations

import argparse
import logging
import sys


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="node name: NAME or NAME@HOST")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on, told to peers")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--cookie", default=None, help="cluster cookie (else HERMES_COOKIE, ~/.hermes/cookie)")
    parser.add_argument("--cluster", default=None, help="'local' or HOST:PORT of the pg service")
    parser.add_argument("--peers", default=None,
                        help="static discovery: comma-separated HOST:PORT of nodes to stay connected to")
    parser.add_argument("--tick-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--lease-ttl", type=float, default=3.0, help=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hermes", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    service = sub.add_parser("service", help="run a pg service in the foreground")
    service.add_argument("--host", default="127.0.0.1")
    service.add_argument("--port", type=int, default=4370)
    service.add_argument("--cookie", default=None)
    service.add_argument("--lease-ttl", type=float, default=3.0)

    node = sub.add_parser("node", help="run a node in the foreground until SIGTERM/SIGINT")
    _common(node)
    node.add_argument("--app", default=None, help="MODULE:FUNCTION spawned as the first actor")
    node.add_argument("--control-fd", type=int, default=None, help=argparse.SUPPRESS)

    shell = sub.add_parser("shell", help="an interactive node, or a shell attached to one")
    shell.add_argument("--name", default=None)
    shell.add_argument("--host", default="127.0.0.1")
    shell.add_argument("--port", type=int, default=0)
    shell.add_argument("--cookie", default=None)
    shell.add_argument("--cluster", default=None)
    shell.add_argument("--remote", default=None, help="NAME@HOST of a running node to attach to")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    remote = getattr(args, "remote", None)
    name = getattr(args, "name", None) or (f"remsh {remote}" if remote else args.command)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    if args.command == "service":
        from .dist._cookie import resolve_cookie
        from .pg._service import serve

        from .dist._manager import is_loopback

        cookie = resolve_cookie(args.cookie)
        if not is_loopback(args.host) and cookie.source == "generated":
            raise SystemExit("refusing to serve on a non-loopback interface with a cookie made up just now: "
                             "pass --cookie, set HERMES_COOKIE or write ~/.hermes/cookie")
        serve(args.host, args.port, cookie=cookie.value, lease_ttl=args.lease_ttl)
    elif args.command == "node":
        from .cluster._nodeproc import run_node

        run_node(args.name, host=args.host, port=args.port, cookie=args.cookie, cluster=args.cluster,
                 app=args.app, control_fd=args.control_fd, tick_interval=args.tick_interval,
                 lease_ttl=args.lease_ttl, peers=args.peers.split(",") if args.peers else None)
    else:
        from .shell import run_shell

        run_shell(name=args.name, host=args.host, port=args.port, cookie=args.cookie, cluster=args.cluster,
                  remote=args.remote)


if __name__ == "__main__":
    main(sys.argv[1:])
