"""One live leaf per name: the server counts a leaf's slots and reports by its name.

Two leaf processes under one name (two machines started without --name, or a copy of a config)
would take each other's reports and slots and double-count. A name belongs to the boot that last
synced under it while that boot is live; another boot may take it over once the first has been
silent for `stale_after` seconds (a restarted leaf: the old process is gone). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Holder:
    boot: str
    seen_at: float


class LeafNames:
    def __init__(self, stale_after: float) -> None:
        self._stale_after = stale_after
        self._holders: dict[str, _Holder] = {}

    def claim(self, name: str, boot: str, now: float) -> str | None:
        """Record that `boot` synced as `name`; the reason to refuse it if another live boot holds the name."""
        holder = self._holders.get(name)
        if holder is not None and holder.boot != boot and now - holder.seen_at <= self._stale_after:
            return (
                f"another live leaf is named {name!r} (boot {holder.boot[:8]}): "
                "give each leaf its own --name (or stop the other one)"
            )
        self._holders[name] = _Holder(boot, now)
        return None
