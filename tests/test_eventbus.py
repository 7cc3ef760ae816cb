"""The event bus on its own: each subscriber's buffer is bounded in bytes; one that falls
further behind is dropped, and the client is told why once, on its next subscribe."""

from __future__ import annotations

from hypd.server import EventBus


def test_a_subscriber_past_its_bound_is_dropped_and_the_client_told_once() -> None:
    bus = EventBus(max_behind=10_000)
    slow = bus.subscribe({"log"}, None, client=42)
    other = bus.subscribe({"run"}, None, client=43)
    for _ in range(20):
        bus.publish("log", {"run": "s:1", "text": "x" * 1000}, run="s:1")
    assert slow.dropped is not None and "MiB behind" in slow.dropped
    assert slow not in bus.subscribers and not slow.waiting and slow.waiting_bytes == 0
    assert other in bus.subscribers and other.dropped is None  # another topic: untouched
    assert bus.notice_for(42) == slow.dropped
    assert bus.notice_for(42) is None and bus.notice_for(43) is None and bus.notice_for(None) is None


def test_what_waits_is_counted_in_bytes_and_an_empty_buffer_takes_one_big_event() -> None:
    bus = EventBus(max_behind=1000)
    sub = bus.subscribe({"log"}, "s:1")
    bus.publish("log", {"run": "s:2", "text": "y" * 5000}, run="s:2")  # another run: not for it
    assert not sub.waiting
    bus.publish("log", {"run": "s:1", "text": "z" * 5000}, run="s:1")
    assert len(sub.waiting) == 1 and sub.waiting_bytes == len(sub.waiting[0]) > 1000 and sub.dropped is None
    bus.publish("log", {"run": "s:1", "text": "z"}, run="s:1")
    assert sub.dropped is not None and not sub.waiting
