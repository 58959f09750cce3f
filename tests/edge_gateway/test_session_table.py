"""The leaf's session table without sockets: phases, silence, standby order, replacement."""

from __future__ import annotations

from device_protocol.feg import Identity
from device_protocol.session_messages import DeviceMessage
from edge_gateway.leaf.session_table import Phase, Session, SessionTable, eligible, takes


def session(number: int, device: str, now: float = 0.0) -> Session:
    identity = Identity(device_id=device, device_info={}, user_info={})
    return Session(("hub", number), identity, "json", now)


def test_a_new_session_takes_only_a_rendezvous() -> None:
    fresh = session(1, "a")
    assert takes(fresh, DeviceMessage.RENDEZVOUS)
    assert not any(takes(fresh, kind) for kind in DeviceMessage if kind is not DeviceMessage.RENDEZVOUS)
    fresh.phase = Phase.STANDBY
    assert not takes(fresh, DeviceMessage.RENDEZVOUS) and takes(fresh, DeviceMessage.END_TRAINING)


def test_standby_sessions_are_served_longest_waiting_first_and_leave_when_selected() -> None:
    table = SessionTable(heartbeat_interval=10.0)
    a, b, c = session(1, "a"), session(2, "b"), session(3, "c")
    for s in (a, b, c):
        table.open(s)
        table.to_standby(s, "job")
    table.to_selected(a, "t1")
    assert table.standby("job") == [b, c] and table.holders() == [a]
    table.to_standby(a, "job")  # an abort: behind the others
    assert table.standby("job") == [b, c, a] and table.holders() == []
    assert a.task_id == "" and a.phase is Phase.STANDBY


def test_silent_sessions_are_found_after_three_intervals_in_order_of_silence() -> None:
    table = SessionTable(heartbeat_interval=10.0)
    a, b = session(1, "a", now=0.0), session(2, "b", now=5.0)
    table.open(a)
    table.open(b)
    assert table.silent(29.0) == []
    assert table.silent(30.0) == [a]
    table.seen(a, 31.0)
    assert table.silent(36.0) == [b]


def test_a_second_session_of_a_device_replaces_the_first() -> None:
    table = SessionTable(heartbeat_interval=10.0)
    first, second = session(1, "a"), session(2, "a")
    table.open(first)
    table.to_standby(first, "job")
    table.to_selected(first, "t1")
    assert table.open(second) is first
    assert list(table.sessions) == [("hub", 2)] and table.holders() == [] and table.standby("job") == []


def test_closing_twice_is_harmless() -> None:
    table = SessionTable(heartbeat_interval=10.0)
    a = session(1, "a")
    table.open(a)
    assert table.close(a.key) is a and table.close(a.key) is None


def test_a_full_battery_on_the_charger_counts_as_charging() -> None:
    assert eligible({"battery_full": True, "unmetered": True}, frozenset({"charging", "unmetered"}))
    assert not eligible({"charging": True}, frozenset({"charging", "unmetered"}))
    assert eligible({}, frozenset())


def test_phase_counts_name_every_phase() -> None:
    table = SessionTable(heartbeat_interval=10.0)
    first, second, third = (session(n, f"d{n}") for n in (1, 2, 3))
    for s in (first, second, third):
        table.open(s)
    table.to_standby(first, "job")
    table.to_standby(second, "job")
    table.to_selected(second, "task-2")
    assert table.phase_counts() == {Phase.CONNECTED: 1, Phase.STANDBY: 1, Phase.SELECTED: 1, Phase.TRAINING: 0}
    table.close(third.key)
    assert table.phase_counts()[Phase.CONNECTED] == 0


def test_a_job_whose_standby_sessions_are_all_parked_is_still_listed() -> None:
    # Its end must reach them: the leaf finds a finished job's sessions through these jobs.
    table = SessionTable(heartbeat_interval=10.0)
    trained = session(1, "d1")
    table.open(trained)
    table.to_standby(trained, "job")
    table.park(trained)
    assert table.standby("job") == [] and table.standby_jobs() == ["job"]
    table.close(trained.key)
    assert table.standby_jobs() == []
