"""Every node option, its default and its check, in one place.

``run``, ``start``, ``LocalCluster``, the node process and the CLI all build
one ``NodeConfig`` with ``NodeConfig.build(**options)``; the layers read it
(``node.config``). An unknown or misspelt option is a ``TypeError`` naming it
and the closest valid one, so ``tick_intervl=0.5`` can never be silently
ignored; a value of the wrong kind is a ``ValueError``/``TypeError`` naming the
option. The CLI's flags are made from the same table (``--tick-interval``).

It must not import any layer: it is read by all of them.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable

LOOPS = ("auto", "asyncio", "uvloop")
MiB = 2**20


@dataclass(frozen=True)
class TLSConfig:
    """Mutual TLS for every mesh link and every connection to the pg service:
    this node's certificate and key, and the CA that peers' certificates must
    chain to (``CERT_REQUIRED`` on both sides)."""

    certfile: str
    keyfile: str
    cafile: str

    def __post_init__(self) -> None:
        for name in ("certfile", "keyfile", "cafile"):
            value = getattr(self, name)
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"TLSConfig.{name} is a path, not {type(value).__name__}")
            object.__setattr__(self, name, os.fspath(value))
            if not os.path.isfile(getattr(self, name)):
                raise ValueError(f"TLSConfig.{name}: no file at {getattr(self, name)!r}")

    @classmethod
    def from_env(cls) -> TLSConfig | None:
        """``HERMES_TLS_CERT``, ``HERMES_TLS_KEY``, ``HERMES_TLS_CA`` (all three, or none)."""
        values = [os.environ.get(f"HERMES_TLS_{part}") for part in ("CERT", "KEY", "CA")]
        if not any(values):
            return None
        if not all(values):
            raise ValueError("set all of HERMES_TLS_CERT, HERMES_TLS_KEY and HERMES_TLS_CA, or none")
        return cls(*values)  # type: ignore[arg-type]


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"option {name} is a number, not {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"option {name} must be a positive number, not {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"option {name} is an integer, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"option {name} must be a positive integer, not {value!r}")


def _optional(check: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    def checked(name: str, value: Any) -> None:
        if value is not None:
            check(name, value)
    return checked


def _string(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"option {name} is a string, not {type(value).__name__}")


def _port(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"option {name} is a port number 0..65535, not {value!r}")


def _cookie(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, (str, bytes)):
        raise TypeError(f"option cookie is a string or bytes, not {type(value).__name__}")
    if value is not None and not value:
        raise ValueError("option cookie must not be empty")


def _cluster(name: str, value: Any) -> None:
    if value is None or value == "local":
        return
    _string(name, value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"option cluster is None, 'local' or 'HOST:PORT', not {value!r}")


def _peers(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError("option peers is a list of 'HOST:PORT' strings or (host, port) tuples")
    for item in value:
        parse_address(item)


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"option {name} is True or False, not {value!r}")


def _loop(name: str, value: Any) -> None:
    if value not in LOOPS:
        raise ValueError(f"option loop (or HERMES_LOOP) is one of {', '.join(LOOPS)}, not {value!r}")


def _tls(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, TLSConfig):
        raise TypeError(f"option tls is a hermes.TLSConfig(certfile, keyfile, cafile), not {type(value).__name__}")


def _pubsub_url(name: str, value: Any) -> None:
    if value is None:
        return
    _string(name, value)
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"option pubsub_url is a redis://HOST:PORT/DB (or rediss://) URL, not {value!r}")


def parse_address(address: Any) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``(host, port)`` -> ``(host, port)``: the one parser of addresses."""
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
        if isinstance(host, str) and host and isinstance(port, int) and 0 < port <= 65535:
            return (host, port)
    elif isinstance(address, str):
        host, sep, port_text = address.rpartition(":")
        if sep and host and port_text.isdigit() and 0 < int(port_text) <= 65535:
            return (host.strip("[]"), int(port_text))
    raise ValueError(f"an address is 'HOST:PORT' or (host, port), not {address!r}")


def _option(default: Any, check: Callable[[str, Any], None], help: str, *, cli: bool = True,
            default_factory: Any = dataclasses.MISSING) -> Any:
    metadata = {"check": check, "help": help, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class NodeConfig:
    """One node's options (see docs/api.md, "Options")."""

    name: str | None = _option(None, _optional(_string), "node name: NAME or NAME@HOST (default: a unique one)")
    cookie: str | bytes | None = _option(None, _cookie, "cluster cookie (else HERMES_COOKIE, then ~/.hermes/cookie)")
    cluster: str | None = _option(None, _cluster, "'local' or HOST:PORT of the pg service (default: standalone)")
    host: str = _option("127.0.0.1", _string, "interface to listen on, and the address peers are told")
    port: int = _option(0, _port, "port to listen on (0: any free port)")
    peers: tuple[Any, ...] | None = _option(None, _peers, "static discovery: HOST:PORT of nodes to stay connected to")
    hidden: bool = _option(False, _bool, "a hidden node (not in nodes(), never a group member elsewhere)", cli=False)
    listen: bool = _option(True, _bool, "accept peer connections", cli=False)
    tick_interval: float = _option(1.0, _positive, "seconds between link ticks; 4 missed ticks: the peer is down")
    lease_ttl: float = _option(3.0, _positive, "seconds the pg service keeps a silent node")
    connect_timeout: float = _option(5.0, _positive, "seconds to connect and authenticate to a peer")
    join_timeout: float = _option(5.0, _positive, "seconds the first discovery round may take before main starts")
    max_frame: int = _option(64 * MiB, _positive_int, "largest frame a peer may send, in bytes")
    max_link_buffer: int = _option(64 * MiB, _positive_int,
                                   "bytes queued on one link before it is closed as overloaded")
    mailbox_warning: int = _option(100_000, _positive_int, "log an actor whose mailbox passes this many messages")
    stall_warning: float = _option(0.1, _positive, "log a handler that holds the loop longer than this (seconds)")
    tls: TLSConfig | None = _option(None, _tls, "mutual TLS for the mesh and the pg service", cli=False)
    pubsub_url: str | None = _option(None, _pubsub_url, "redis://HOST:PORT/DB: the default PubSub goes through Redis")
    # HERMES_LOOP (read once, here) sets the default, e.g. to run a test suite on the other loop
    loop: str = _option(os.environ.get("HERMES_LOOP") or "auto", _loop, "event loop of run() and node processes: auto (uvloop if installed), "
                        "asyncio or uvloop")

    def __post_init__(self) -> None:
        for f in fields(self):
            f.metadata["check"](f.name, getattr(self, f.name))
        if self.peers is not None:
            object.__setattr__(self, "peers", tuple(parse_address(p) for p in self.peers))

    @classmethod
    def build(cls, **options: Any) -> NodeConfig:
        """A config from keyword options: unknown names raise ``TypeError`` with the closest valid one."""
        check_names(options, valid=option_names())
        return cls(**options)

    def replace(self, **changes: Any) -> NodeConfig:
        check_names(changes, valid=option_names())
        return dataclasses.replace(self, **changes)

    def non_defaults(self) -> dict[str, Any]:
        """The options that differ from their default (to pass a config on)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != (f.default if f.default is not dataclasses.MISSING else None)}


def option_names() -> list[str]:
    return [f.name for f in fields(NodeConfig)]


def cli_options() -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` for the options the CLI exposes as ``--flags``."""
    return [(f.name, f.default, f.metadata["help"]) for f in fields(NodeConfig) if f.metadata["cli"]]


def check_names(options: dict[str, Any], *, valid: list[str], what: str = "option") -> None:
    """``TypeError`` for the first name not in ``valid``, with the closest valid one."""
    for name in options:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid options: {', '.join(sorted(valid))}"
            raise TypeError(f"unknown {what} {name!r}{hint}")
