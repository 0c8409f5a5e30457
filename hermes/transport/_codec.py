"""Serialization of values that cross nodes: pickle first, cloudpickle when needed.

Owns the choice of pickler and the conversion of pickling failures into
``SerializationError`` (the one boundary where that happens). It must not know
what the values mean: messages, pids and functions are all opaque objects here.

Rules:

- ``dumps`` tries the C pickler (protocol 5) first: it is several times faster
  than cloudpickle. It falls back to cloudpickle when pickle fails (lambdas,
  closures, local classes) *or* when the result names ``__main__``: pickle
  stores classes and functions by reference, and ``__main__`` on the receiving
  node is a different module, so the reference would not resolve there.
  Modules registered with ``cloudpickle.register_pickle_by_value`` are treated
  as ``__main__`` is: a pickle that names one is redone by cloudpickle, which
  ships their code by value (the receiving node may not be able to import
  them). This holds for every value, so code shipped by ``spawn(node=)``,
  ``rpc`` and ``LocalCluster.rpc`` honours the registry too.
- Code (a ``spawn(node=)`` target, an ``rpc`` function) goes through the same
  ``dumps``: an importable module-level function pickles by reference (the
  receiver runs its own copy), a lambda or closure by value.
- ``loads`` is ``pickle.loads``; it must only ever see bytes from an
  authenticated peer (the connection guarantees that).

Cost of the ``__main__`` check (measured on CPython 3.11 on the dev machine),
next to ~250 ns for ``pickle.dumps`` of a small tuple: ``bytes.find`` costs
~75 ns for a small pickle (~0.3 ns/byte beyond that), nearly all of it the
method call. So it runs only when the pickle can name a module at all: from
protocol 4 every reference to a class or function is a ``STACK_GLOBAL``
opcode, and ``opcode in data`` (an int: one ``memchr``) costs ~20 ns. Messages
of builtin values (str, int, tuple, dict...) have no such byte unless their
data happens to contain it, and then the full check runs, as it must.
(``b"__main__" in data`` would be slower than ``find``: ``bytes.__contains__``
first tries the needle as an int and throws away a TypeError.)
"""
from __future__ import annotations

import pickle
import re
from typing import Any

import cloudpickle  # type: ignore[import-untyped]  # it ships no type information

from hermes._errors import SerializationError

__all__ = ["NAMES_A_GLOBAL", "PROTOCOL", "dumps", "dumps_rest", "loads"]

PROTOCOL = 5

_MAIN = b"__main__"
_STACK_GLOBAL = pickle.STACK_GLOBAL[0]  # an int: ``in`` is then a memchr
# A plain pickle (``pickle.dumps(obj, PROTOCOL)``) without this opcode names no
# class or function, and is ``dumps``'s answer as it is: a hot path may pickle
# inline and call ``dumps_rest`` only when it is there (see ``dumps_rest``).
NAMES_A_GLOBAL = _STACK_GLOBAL
_pickle_dumps = pickle.dumps
# cloudpickle's own registry (a set it mutates in place); read, never written here.
# ``list_registry_pickle_by_value()`` would copy it on every call.
_BY_VALUE: set[str] = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", set())
# Pickle names the offending type in messages such as
# "cannot pickle '_thread.lock' object" or "Can't pickle <function <lambda> at ...>".
_INNER_TYPE = re.compile(r"(?:cannot|can't) pickle '([^']+)' object", re.IGNORECASE)

loads = pickle.loads


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` so that another node can unpickle it.

    Raises ``SerializationError`` (a ``TypeError``) naming the type that could
    not be pickled, with the pickler's exception as ``__cause__``.
    """
    try:
        data = _pickle_dumps(obj, PROTOCOL)
    except Exception:  # pickle raises PicklingError, TypeError, AttributeError, ...
        pass  # cloudpickle, below: outside this handler, so its error does not chain this one
    else:
        if _STACK_GLOBAL not in data or (data.find(_MAIN) == -1 and not (_BY_VALUE and _names_by_value(data))):
            return data
    return _cloudpickle(obj)


def dumps_rest(data: bytes | None, obj: Any) -> bytes:
    """The rest of ``dumps(obj)`` for a caller that pickled ``obj`` inline:
    ``data`` is ``pickle.dumps(obj, PROTOCOL)`` if that did not raise (then it
    contains ``NAMES_A_GLOBAL``), else ``None``. The same answer and the same
    ``SerializationError`` as ``dumps``."""
    if data is not None and data.find(_MAIN) == -1 and not (_BY_VALUE and _names_by_value(data)):
        return data
    return _cloudpickle(obj)


def _names_by_value(data: bytes) -> bool:
    """True if the pickle may name a module registered by value (a false
    positive only costs a cloudpickle)."""
    return any(data.find(name.encode()) != -1 for name in _BY_VALUE)


def _cloudpickle(obj: Any) -> bytes:
    try:
        return cloudpickle.dumps(obj, protocol=PROTOCOL)
    except Exception as exc:  # cloudpickle re-raises whatever the reducers raise
        raise _serialization_error(obj, exc) from exc


def _serialization_error(obj: Any, exc: BaseException) -> SerializationError:
    top = _type_name(type(obj))
    message = f"{type(exc).__name__}: {exc}"
    match = _INNER_TYPE.search(str(exc))
    if match and match.group(1) not in (top, type(obj).__name__):
        message = f"it contains a value of type {match.group(1)!r} ({message})"
    return SerializationError(top, message)


def _type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", None) else f"{module}.{cls.__qualname__}"
