"""Simulated device groups of one job: NVFlare's simulator announces `<prefix>?N` (devices
`<prefix>#0` .. `<prefix>#N-1`, docs/NVFLARE_SIMULATOR.md §6.7). Pure (no I/O).

Issue 11 item 3: a prefix had no length bound, every group rode in every leaf heartbeat, and each
new one rewrote the server's checkpoint. Now a group costs O(1) to record, prefixes and the
number of groups are bounded, and leaves fetch the groups by `version`, only when it moved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_PREFIX_CHARS = 64  # a uuid (36) with room to spare
MAX_GROUPS = 32  # per job; one simulator process announces one group
MAX_GROUP_DEVICES = 100_000  # per job: the devices only fill the /selection answer


class GroupRefused(ValueError):
    """A group the job cannot take; `too_many_groups` tells the two bounds apart."""

    def __init__(self, message: str, too_many_groups: bool = False) -> None:
        super().__init__(message)
        self.too_many_groups = too_many_groups


@dataclass
class DeviceGroups:
    """The groups of one job, their device total, and a version that moves with every change."""

    groups: dict[str, int] = field(default_factory=dict)
    devices: int = 0
    version: int = 0

    @classmethod
    def restored(cls, groups: Mapping[str, int] | None) -> DeviceGroups:
        """From a checkpoint (taken as it was written: it passed the bounds then)."""
        groups = dict(groups or {})
        return cls(groups, sum(groups.values()), 1 if groups else 0)

    def register(self, prefix: str, count: int) -> bool:
        """Record `<prefix>?count`; True when it changed anything. Raises `GroupRefused`."""
        if not 0 < len(prefix) <= MAX_PREFIX_CHARS:
            raise GroupRefused(f"a group prefix has 1 to {MAX_PREFIX_CHARS} characters")
        before = self.groups.get(prefix)
        if before == count:
            return False
        if before is None and len(self.groups) >= MAX_GROUPS:
            raise GroupRefused(f"a job lists at most {MAX_GROUPS} simulated device groups", too_many_groups=True)
        devices = self.devices - (before or 0) + count
        if not count > 0 or devices > MAX_GROUP_DEVICES:
            raise GroupRefused(f"a job lists at most {MAX_GROUP_DEVICES} simulated devices")
        self.groups[prefix] = count
        self.devices = devices
        self.version += 1
        return True
