"""Where a node's cluster cookie comes from.

Owns the resolution order (explicit argument, ``HERMES_COOKIE``, the cookie
file) and the creation of the cookie file on first use. It must not know how
the cookie is used (see ``_handshake``) nor whether the node listens.

The result says where the cookie came from, so that the node can refuse to
listen on a non-loopback address with a cookie it has just made up: nobody
else can know it, so the only peers it would let in are its own children, and
the file is a secret worth creating on purpose before exposing a port.

The file is created atomically: the value is written to a private temporary
file which is then hard-linked to its final name. ``link`` fails if the name
exists, so when two processes start at once exactly one wins and both read
the winner's value; nobody can ever read a half-written file.
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["ENV_VAR", "CookieSource", "ResolvedCookie", "default_cookie_path", "resolve_cookie"]

log = logging.getLogger(__name__)

ENV_VAR = "HERMES_COOKIE"
CookieSource = Literal["explicit", "env", "file", "generated"]


@dataclass(frozen=True, slots=True)
class ResolvedCookie:
    """A cookie and where it came from. The value is kept out of ``repr``."""

    value: bytes = field(repr=False)
    source: CookieSource

    @property
    def generated(self) -> bool:
        """True if this process has just made the cookie up (first use)."""
        return self.source == "generated"


def default_cookie_path() -> Path:
    return Path.home() / ".hermes" / "cookie"


def resolve_cookie(explicit: str | bytes | None = None, *, path: Path | str | None = None,
                   create: bool = True) -> ResolvedCookie:
    """Return the cookie: ``explicit``, else ``$HERMES_COOKIE``, else the cookie file.

    The file (default ``~/.hermes/cookie``) is created with a random value on
    first use, in a directory of mode 0700, with mode 0600. With ``create=False``
    (a start that will refuse a made-up cookie) nothing is written: the value
    returned is then ``"generated"`` and used by no one.
    """
    if explicit is not None:
        return ResolvedCookie(_non_empty(_to_bytes(explicit), "explicit cookie"), "explicit")
    from_env = os.environ.get(ENV_VAR, "")
    if from_env:
        return ResolvedCookie(from_env.encode(), "env")
    file = Path(path) if path is not None else default_cookie_path()
    if not create:
        existing = _read(file)
        return ResolvedCookie(existing, "file") if existing is not None else \
            ResolvedCookie(secrets.token_urlsafe(32).encode(), "generated")
    return _from_file(file)


def _from_file(path: Path) -> ResolvedCookie:
    existing = _read(path)
    if existing is not None:
        return ResolvedCookie(existing, "file")
    if _create(path):
        log.info("generated a new cookie in %s", path)
        return ResolvedCookie(_read_required(path), "generated")
    # Another process created it between our read and our link: use theirs.
    return ResolvedCookie(_read_required(path), "file")


def _create(path: Path) -> bool:
    """Atomically create ``path`` with a fresh value; False if it already exists."""
    _ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_urlsafe(32).encode())
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _ensure_private_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask; make sure it is exactly 0700.
    os.chmod(directory, 0o700)


def _read(path: Path) -> bytes | None:
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("cookie file %s is accessible by other users (mode %o); chmod 600 it", path, mode & 0o777)
    return _non_empty(data, str(path))


def _read_required(path: Path) -> bytes:
    data = _read(path)
    if data is None:
        raise FileNotFoundError(f"cookie file {path} vanished while it was being created")
    return data


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _non_empty(value: bytes, what: str) -> bytes:
    if not value:
        raise ValueError(f"{what} is empty")
    return value
