"""An actor's drain handles the messages queued when its batch starts. What a
handler does to its own mailbox meanwhile must not break it: a message taken
back (``demonitor(ref, flush=True)``) shortens the batch, messages sent to
itself join it up to the batch size, and the actor keeps taking messages after."""
from __future__ import annotations

import pytest

import hermes
from conftest import run_node, wait_until

pytestmark = pytest.mark.timeout(30)


class Forgets(hermes.Actor):
    """Monitors a process; on ``"forget"`` demonitors it, flushing its queued Down."""

    def __init__(self):
        self.ref = None
        self.seen = []

    def handle_call(self, request, sender):
        if request == "watch":
            self.ref = hermes.monitor(hermes.spawn(_sleeper))
            return self.ref
        return list(self.seen)

    def handle_info(self, msg):
        self.seen.append(msg if isinstance(msg, str) else type(msg).__name__)
        if msg == "forget":
            hermes.demonitor(self.ref, flush=True)


async def _sleeper():
    await hermes.receive()


@pytest.mark.parametrize("after", [0, 1])
def test_a_message_taken_back_during_the_batch_ends_it_and_the_actor_goes_on(after):
    """Two messages queued in one turn; the first one's handler takes the second
    back. The batch stops short (none left, or the one queued after), and the
    actor still answers the next call."""

    async def main():
        actor = hermes.spawn(Forgets)
        ref = await hermes.call(actor, "watch")
        hermes.send(actor, "forget")
        hermes.send(actor, hermes.Down(ref, hermes.self(), "taken back before it is handled"))
        if after:
            hermes.send(actor, "after")
        first = await hermes.call(actor, "seen", timeout=5)  # queued behind them, in the same batch
        hermes.send(actor, "later")
        return first, await hermes.call(actor, "seen", timeout=5)

    first, then = run_node(main)
    assert first == ["forget"] + ["after"] * after
    assert then == first + ["later"]


class SelfSender(hermes.Actor):
    def __init__(self):
        self.seen = []

    def handle_info(self, msg):
        self.seen.append(msg)
        if msg < 3:
            hermes.send(hermes.self(), msg + 1)

    def handle_call(self, request, sender):
        return list(self.seen)


def test_messages_a_handler_sends_to_itself_are_handled_in_order():
    async def main():
        actor = hermes.spawn(SelfSender)
        hermes.send(actor, 0)
        hermes.send(actor, 10)
        return await wait_until(lambda: _seen_all(actor), timeout=10)

    assert run_node(main) == [0, 10, 1, 2, 3]


async def _seen_all(actor):
    seen = await hermes.call(actor, "seen", timeout=5)
    return seen if len(seen) >= 5 else None
