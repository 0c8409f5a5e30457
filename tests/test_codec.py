"""Tests for hermes.transport._codec: pickle first, cloudpickle when needed, clear errors."""
from __future__ import annotations

import pickle
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass

import pytest

from hermes._errors import SerializationError
from hermes.transport._codec import dumps, loads

pytestmark = pytest.mark.timeout(30)


@dataclass(frozen=True)
class Point:  # importable (tests module), so pickled by reference
    x: int
    y: int


def module_level_function(x: int) -> int:
    return x * 2


@pytest.mark.parametrize(
    "value",
    [None, 1, 2.5, "text", b"bytes", [1, [2, 3]], (1, "a"), {"k": {1, 2}}, OrderedDict(a=1), Point(1, 2),
     "__main__ appears in this string"],
)
def test_plain_data_round_trips(value: object) -> None:
    assert loads(dumps(value)) == value


def test_exceptions_round_trip() -> None:
    restored = loads(dumps(ValueError("boom", 1)))
    assert type(restored) is ValueError and restored.args == ("boom", 1)


def test_plain_data_uses_the_plain_pickler() -> None:
    assert dumps((1, "a", Point(1, 2))) == pickle.dumps((1, "a", Point(1, 2)), 5)


def test_lambda_closure_and_local_class_round_trip_through_cloudpickle() -> None:
    offset = 10

    class Local:
        def __init__(self, v: int) -> None:
            self.v = v

        def plus(self) -> int:
            return self.v + offset

    assert loads(dumps(lambda x: x + offset))(1) == 11
    assert loads(dumps(Local(5))).plus() == 15
    restored_class = loads(dumps(Local))
    assert restored_class(1).plus() == 11


def test_main_module_objects_fall_back_to_cloudpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    # A class that claims to live in __main__ pickles by reference with plain
    # pickle, which the receiving node could not resolve: it must go by value.
    class Script:
        pass

    Script.__module__ = "__main__"
    Script.__qualname__ = "Script"
    import __main__

    monkeypatch.setattr(__main__, "Script", Script, raising=False)
    data = dumps(Script())
    assert data != pickle.dumps(Script(), 5)
    monkeypatch.delattr(__main__, "Script")
    assert type(loads(data)).__name__ == "Script"  # resolves without __main__.Script


def test_the_main_check_sees_references_nested_in_plain_data(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check is skipped only for pickles without a STACK_GLOBAL opcode; a
    # __main__ function deep inside builtin containers must still go by value.
    def handler() -> str:
        return "ran"

    handler.__module__ = "__main__"
    handler.__qualname__ = "handler"
    import __main__

    monkeypatch.setattr(__main__, "handler", handler, raising=False)
    message = {"topic": ["user.created", ("nested", handler)]}
    data = dumps(message)
    assert data != pickle.dumps(message, 5)
    monkeypatch.delattr(__main__, "handler")
    assert loads(data)["topic"][1][1]() == "ran"


def test_data_holding_the_opcode_byte_is_plain_pickle() -> None:
    # 0x93 (STACK_GLOBAL) inside the data forces the full check, which finds nothing.
    value = (b"\x93\x93", "\x93", 0x93, "no module named here")
    assert pickle.STACK_GLOBAL[0] in pickle.dumps(value, 5)
    assert dumps(value) == pickle.dumps(value, 5)
    assert loads(dumps(value)) == value


def test_code_ships_by_value_or_by_reference() -> None:
    captured = 3
    assert loads(dumps(lambda: captured))() == 3
    by_reference = dumps(module_level_function)
    assert loads(by_reference) is module_level_function
    assert len(by_reference) < 200  # a reference, not the code


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(threading.Lock(), "_thread.lock"), ((x for x in ()), "generator")],
)
def test_unpicklable_values_raise_serialization_error_naming_the_type(value: object, type_name: str) -> None:
    with pytest.raises(SerializationError) as info:
        dumps(value)
    assert info.value.type_name == type_name
    assert type_name in str(info.value)
    assert info.value.__cause__ is not None
    assert isinstance(info.value, TypeError)


def test_socket_inside_a_container_names_both_types() -> None:
    with socket.socket() as sock:
        with pytest.raises(SerializationError) as info:
            dumps({"conn": sock})
    assert info.value.type_name == "dict"
    assert "'socket'" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)


def test_code_that_cannot_be_shipped_is_a_serialization_error() -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        dumps(lambda: lock)
    assert info.value.__cause__ is not None
