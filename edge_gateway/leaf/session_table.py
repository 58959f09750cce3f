"""A leaf's live sessions (PROTOCOL.md §9): who is connected, in which phase, and who is silent.
No I/O: time is passed in, and the shell (`session_service.py`) acts on what it is told.

A session's phase follows XAIN's participant (STANDBY → ROUND → back), as a table of which device
messages each phase takes::

    CONNECTED  --rendezvous-->  STANDBY  --selected (round pushed)-->  SELECTED
    SELECTED   --start_training-->  TRAINING  --end_training / abort-->  STANDBY
    SELECTED, TRAINING  --slot lost (round closed, lease expired)-->  STANDBY (standby pushed)

A message a phase does not take is the device's mistake: `error`, and the session stays.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from device_protocol.feg import Identity
from device_protocol.session_messages import DeviceMessage

SessionKey = tuple[str, int]  # (proxy hub, session number)
# A session silent for this many heartbeat intervals is gone (PROTOCOL.md §9).
SILENT_INTERVALS = 3
# Malformed or out-of-order messages a session may send before it is closed (1008).
MAX_STRIKES = 10


class Phase(Enum):
    CONNECTED = "connected"  # upgraded, no rendezvous yet
    STANDBY = "standby"
    SELECTED = "selected"  # holds a slot; `round` pushed, waits for start_training
    TRAINING = "training"  # has its task


_JOINED = frozenset((Phase.STANDBY, Phase.SELECTED, Phase.TRAINING))
TAKES: dict[Phase, frozenset[DeviceMessage]] = {
    Phase.CONNECTED: frozenset((DeviceMessage.RENDEZVOUS,)),
    **{
        phase: frozenset(
            (DeviceMessage.HEARTBEAT, DeviceMessage.START_TRAINING, DeviceMessage.END_TRAINING, DeviceMessage.ABORT)
        )
        for phase in _JOINED
    },
}


@dataclass
class Session:
    key: SessionKey
    identity: Identity
    codec: str
    last_seen: float
    phase: Phase = Phase.CONNECTED
    job_id: str = ""
    task_id: str = ""  # the slot's task while SELECTED or TRAINING
    state: dict[str, bool] = field(default_factory=dict)  # last reported device state
    strikes: int = 0

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def holds_slot(self) -> bool:
        return self.phase is Phase.SELECTED or self.phase is Phase.TRAINING


def takes(session: Session, kind: DeviceMessage) -> bool:
    """Whether the session's phase takes this message (the table above)."""
    return kind in TAKES[session.phase]


def eligible(state: dict[str, bool], requires: frozenset[str]) -> bool:
    """Whether a reported device state meets a job's requirements; a full battery on the charger
    counts as charging (PROTOCOL.md §9). An unreported item is not met."""
    for need in requires:
        have = state.get(need, False) or (need == "charging" and state.get("battery_full", False))
        if not have:
            return False
    return True


class SessionTable:
    """Every session of one leaf, by key and device, standby ones per job in the order they came."""

    def __init__(self, heartbeat_interval: float) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.sessions: dict[SessionKey, Session] = {}
        self._by_device: dict[str, SessionKey] = {}
        # In order of last message, so finding the silent ones stops at the first live one.
        self._by_last_seen: OrderedDict[SessionKey, None] = OrderedDict()
        self._standby: dict[str, OrderedDict[SessionKey, None]] = {}
        self._holders: dict[SessionKey, Session] = {}  # SELECTED or TRAINING
        # STANDBY sessions whose device trained in the job's current selection: out of the queue
        # (each selection would otherwise read them all again) until the next selection.
        self._parked: dict[str, OrderedDict[SessionKey, None]] = {}

    def open(self, session: Session) -> Session | None:
        """Add a session; returns the one it replaces (same device id), already removed."""
        replaced = None
        old_key = self._by_device.get(session.device_id)
        if old_key is not None:
            replaced = self.close(old_key)
        self.sessions[session.key] = session
        self._by_device[session.device_id] = session.key
        self._by_last_seen[session.key] = None
        return replaced

    def close(self, key: SessionKey) -> Session | None:
        """Remove a session; returns it (None if it was gone already)."""
        session = self.sessions.pop(key, None)
        if session is None:
            return None
        if self._by_device.get(session.device_id) == key:
            del self._by_device[session.device_id]
        self._by_last_seen.pop(key, None)
        self._holders.pop(key, None)
        self._leave_standby(session)
        return session

    def seen(self, session: Session, now: float) -> None:
        session.last_seen = now
        self._by_last_seen.move_to_end(session.key)

    def silent(self, now: float) -> list[Session]:
        """Sessions silent for SILENT_INTERVALS heartbeat intervals (not removed)."""
        horizon = now - SILENT_INTERVALS * self.heartbeat_interval
        gone = []
        for key in self._by_last_seen:
            session = self.sessions[key]
            if session.last_seen > horizon:
                break
            gone.append(session)
        return gone

    def to_standby(self, session: Session, job_id: str) -> None:
        """The session waits for a round of `job_id`, behind those already waiting."""
        self._leave_standby(session)
        self._holders.pop(session.key, None)
        session.phase = Phase.STANDBY
        session.job_id = job_id
        session.task_id = ""
        self._standby.setdefault(job_id, OrderedDict())[session.key] = None

    def to_selected(self, session: Session, task_id: str) -> None:
        self._leave_standby(session)
        self._holders[session.key] = session
        session.phase = Phase.SELECTED
        session.task_id = task_id

    def park(self, session: Session) -> None:
        """A standby session that already trained in this selection leaves the queue."""
        self._leave_standby(session)
        self._parked.setdefault(session.job_id, OrderedDict())[session.key] = None

    def unpark(self, job_id: str) -> None:
        """A new selection: parked sessions wait again, behind those already waiting."""
        for key in self._parked.pop(job_id, ()):
            self.to_standby(self.sessions[key], job_id)

    def to_training(self, session: Session) -> None:
        session.phase = Phase.TRAINING

    def standby(self, job_id: str) -> list[Session]:
        """The job's standby sessions, longest waiting first."""
        waiting = self._standby.get(job_id)
        return [] if not waiting else [self.sessions[key] for key in waiting]

    def standby_count(self, job_id: str) -> int:
        return len(self._standby.get(job_id, ()))

    def standby_jobs(self) -> list[str]:
        """Jobs with sessions in STANDBY, parked ones included (a job's end must reach them too)."""
        return list(self._standby.keys() | self._parked.keys())

    def holders(self) -> list[Session]:
        """Sessions holding a slot (SELECTED or TRAINING)."""
        return list(self._holders.values())

    def phase_counts(self) -> dict[Phase, int]:
        """Sessions in each phase, every phase named (0 when none)."""
        counts = dict.fromkeys(Phase, 0)
        for session in self.sessions.values():
            counts[session.phase] += 1
        return counts

    def in_job(self, job_id: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.job_id == job_id]

    def _leave_standby(self, session: Session) -> None:
        for queues in (self._standby, self._parked):
            waiting = queues.get(session.job_id)
            if waiting is not None:
                waiting.pop(session.key, None)
                if not waiting:
                    del queues[session.job_id]
