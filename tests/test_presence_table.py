"""The presence ``Table`` against a plain model: ``topic -> key -> {pid: meta}``.

The table packs a key's entries as one tuple, or a list when several pids
track the same key; any sequence of adds, removes and replaces must leave it
listing exactly what the model holds, with no empty topic or key left behind."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.presence._table import MISSING, Table

TOPICS, KEYS, PIDS = ["t1", "t2"], ["k1", "k2"], [1, 2, 3]
ops = st.lists(st.tuples(st.sampled_from(["add", "remove", "replace"]), st.sampled_from(TOPICS),
                         st.sampled_from(KEYS), st.sampled_from(PIDS), st.integers(0, 9)), max_size=60)


def listed(table: Table) -> dict[Any, dict[Any, dict[int, Any]]]:
    out: dict[Any, dict[Any, dict[int, Any]]] = {}
    for topic, keys in table.topics.items():
        assert keys, f"topic {topic!r} left empty"
        for key, found in keys.items():
            entries = found if type(found) is list else [found]
            assert type(found) is not list or len(found) >= 2, "a list of one entry"
            out.setdefault(topic, {})[key] = dict(entries)
    return out


@settings(max_examples=300, deadline=None)
@given(ops)
def test_table_matches_the_model(sequence: list[tuple[str, Any, Any, int, int]]) -> None:
    table = Table(creation=1)
    model: dict[Any, dict[Any, dict[int, Any]]] = {}
    for op, topic, key, pid, meta in sequence:
        entries = model.get(topic, {}).get(key, {})
        if op == "add":
            assert table.add(topic, key, pid, meta) is (pid not in entries)
            model.setdefault(topic, {}).setdefault(key, {}).setdefault(pid, meta)
        elif op == "remove":
            expected = entries.get(pid, MISSING)
            got = table.remove(topic, key, pid)
            assert got is MISSING if expected is MISSING else got == expected
            if expected is not MISSING:
                del model[topic][key][pid]
                if not model[topic][key]:
                    del model[topic][key]
                if not model[topic]:
                    del model[topic]
        else:
            expected = entries.get(pid, MISSING)
            got = table.replace(topic, key, pid, meta)
            assert got is MISSING if expected is MISSING else got == expected
            if expected is not MISSING:
                model[topic][key][pid] = meta
        assert listed(table) == model
