"""``python -m hermes service | node | shell | certs``: the command line.

The node options (``--tick-interval``, ``--max-link-buffer``...) are made from
``NodeConfig``'s table, so the CLI, ``run`` and ``LocalCluster`` share one list
of names, defaults and checks.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
import traceback
from typing import Any

from ._config import TLSConfig, cli_options
from ._errors import HermesError

NODE_FLAGS_SKIPPED = ("name", "host", "port", "cookie", "cluster", "peers")  # added by hand, with their help


def _node_options(parser: argparse.ArgumentParser, *, name_required: bool) -> None:
    parser.add_argument("--name", required=name_required, default=None, help="node name: NAME or NAME@HOST")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on, and the address peers are told (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free port)")
    parser.add_argument("--cookie", default=None, help="cluster cookie (default: HERMES_COOKIE, else ~/.hermes/cookie)")
    parser.add_argument("--cluster", default=None,
                        help="'local' or HOST:PORT of the pg service (default: none, a standalone node)")
    parser.add_argument("--peers", default=None,
                        help="static discovery: comma-separated HOST:PORT of nodes to stay connected to")
    for name, default, text in cli_options():
        if name in NODE_FLAGS_SKIPPED:
            continue
        flag = "--" + name.replace("_", "-")
        kind = type(default) if default is not None else str
        parser.add_argument(flag, dest=name, type=kind, default=None, help=f"{text} (default: {default})")
    parser.add_argument("--tls-cert", default=None, help="this node's certificate (PEM); also HERMES_TLS_CERT")
    parser.add_argument("--tls-key", default=None, help="its private key (PEM); also HERMES_TLS_KEY")
    parser.add_argument("--tls-ca", default=None, help="the CA peers' certificates must chain to; also HERMES_TLS_CA")


def node_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``NodeConfig`` options given on the command line (defaults left out)."""
    options: dict[str, Any] = {}
    for name in ("name", "host", "port", "cookie", "cluster"):
        options[name] = getattr(args, name)
    if args.peers:
        options["peers"] = [p.strip() for p in args.peers.split(",") if p.strip()]
    for name, _default, _text in cli_options():
        if name not in NODE_FLAGS_SKIPPED and getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    tls_parts = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(tls_parts):
        if not all(tls_parts):
            raise SystemExit("hermes: --tls-cert, --tls-key and --tls-ca go together")
        options["tls"] = TLSConfig(*tls_parts)
    else:
        tls = TLSConfig.from_env()
        if tls is not None:
            options["tls"] = tls
    return options


@functools.cache  # built once: a LocalCluster's zygote builds it for all the nodes it forks
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hermes", description="Hermes: Erlang/OTP-style actors and a "
                                     "distributed PubSub. Also run as `python -m hermes`.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    service = sub.add_parser("service", help="run a pg service in the foreground")
    service.add_argument("--host", default="127.0.0.1", help="interface to serve on (default: %(default)s)")
    service.add_argument("--port", type=int, default=4370, help="port (default: %(default)s)")
    service.add_argument("--cookie", default=None, help="cluster cookie (default: HERMES_COOKIE, else ~/.hermes/cookie)")
    service.add_argument("--lease-ttl", type=float, default=3.0,
                         help="seconds a silent node keeps its registration (default: %(default)s)")
    service.add_argument("--idle-exit", type=float, default=None,
                         help="exit once no node has used the service for this many seconds (default: never)")
    service.add_argument("--log-size", type=int, default=None, help=argparse.SUPPRESS)

    node = sub.add_parser("node", help="run a node in the foreground until SIGTERM/SIGINT")
    _node_options(node, name_required=True)
    node.add_argument("--app", default=None, help="MODULE:FUNCTION spawned as the first actor")
    node.add_argument("--control-fd", type=int, default=None, help=argparse.SUPPRESS)

    shell = sub.add_parser("shell", help="an interactive node, or a shell attached to one")
    _node_options(shell, name_required=False)
    shell.add_argument("--remote", default=None, help="NAME@HOST of a running node to attach to")
    _certs_command(sub)
    return parser


def _certs_command(sub: Any) -> None:
    certs = sub.add_parser("certs", help="write a test CA and a certificate + key per node name (TLS)")
    certs.add_argument("dir", help="directory to write into (its ca.pem/ca.key are reused if present)")
    certs.add_argument("names", nargs="+", metavar="NAME", help="node names: NAME.pem and NAME.key each")


def _run_certs(args: argparse.Namespace) -> None:
    from ._certs import write_certs

    try:
        written = write_certs(args.dir, args.names)
    except (ValueError, RuntimeError, OSError) as exc:
        raise SystemExit(f"hermes certs: {exc}") from None
    for path in written:
        print(path)


def main(argv: list[str] | None = None) -> None:
    """The error boundary: a Hermes, OS or option error ends the command with one
    line naming cause and fix, and exit code 1; ``-v`` adds the traceback."""
    args = _parser().parse_args(argv)
    try:
        _main(args)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        sys.exit(130)  # Ctrl-C during startup: the user knows why it ended
    except (HermesError, OSError, ValueError, TypeError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"hermes: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)


def one_line(exc: BaseException) -> str:
    """An error as one line: its message (an ``OSError``'s strerror), never its chain."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror and exc.errno else str(exc)
    first = (text or type(exc).__name__).splitlines()[0]
    return first if isinstance(exc, (HermesError, OSError)) else f"{type(exc).__name__}: {first}"


def _main(args: argparse.Namespace) -> None:
    # a shell shows WARNING and up only, so that log lines do not cut through the prompt
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.command == "shell" else logging.INFO)
    remote = getattr(args, "remote", None)
    name = getattr(args, "name", None) or (f"remsh {remote}" if remote else args.command)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    if args.command == "certs":
        _run_certs(args)
    elif args.command == "service":
        from .mesh import is_loopback
        from .pg.service import serve
        from .transport import resolve_cookie

        cookie = resolve_cookie(args.cookie, create=is_loopback(args.host))
        if not is_loopback(args.host) and cookie.source == "generated":
            raise HermesError(f"refusing to serve on {args.host} with a cookie made up just now: "
                              "pass --cookie, set HERMES_COOKIE or write ~/.hermes/cookie")
        try:
            extra = {"log_size": args.log_size} if args.log_size is not None else {}
            serve(args.host, args.port, cookie=cookie.value, lease_ttl=args.lease_ttl, idle_exit=args.idle_exit,
                  tls=TLSConfig.from_env(), **extra)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve on {args.host}:{args.port}: {(exc.strerror or str(exc)).lower()}: choose "
                          "another --port or stop the process that holds it") from exc
    elif args.command == "node":
        from .cluster import run_node

        run_node(node_options(args), app=args.app, control_fd=args.control_fd)  # NameInUse: one line, exit 1
    else:
        from .shell import run_shell

        options = node_options(args)
        run_shell(name=options.pop("name"), remote=args.remote, **options)


if __name__ == "__main__":
    main(sys.argv[1:])
