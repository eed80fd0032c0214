"""The events a record keeps of a stream: all of them while they fit, then the first ones, a
marker counting what was left out, and the last ones."""

import json

from addon.call_trace import OMITTED_EVENT, EventLog


def test_events_within_the_budget_are_kept_whole() -> None:
    log = EventLog(budget=100, tail=2)
    sent = [("delta", "x" * 10) for _ in range(10)]
    for event in sent:
        log.add(event)
    assert log.events() == sent


def test_past_the_budget_the_first_and_last_events_are_kept_and_the_rest_counted() -> None:
    log = EventLog(budget=100, tail=3)
    sent = [(None, f"{n:09d}") for n in range(50)]  # 9 bytes each: the first 11 fit
    for event in sent:
        log.add(event)
    kept = log.events()
    marker = kept[11]
    assert kept[:11] == sent[:11] and kept[12:] == sent[-3:]
    assert marker[0] == OMITTED_EVENT
    assert json.loads(marker[1]) == {"omitted_events": 36, "omitted_bytes": 36 * 9}


def test_a_large_event_goes_to_the_tail_and_everything_after_it_too() -> None:
    log = EventLog(budget=100, tail=2)
    for event in [("a", "1"), ("big", "x" * 200), ("b", "2"), ("c", "3")]:
        log.add(event)
    assert log.events() == [
        ("a", "1"),
        (OMITTED_EVENT, '{"omitted_events": 1, "omitted_bytes": 200}'),
        ("b", "2"),
        ("c", "3"),
    ]
