"""Which client a task request counts against, and its cap of unfinished tasks. Pure (no I/O).

One client minting device ids could otherwise take every slot of a round and never report
(issue 11, Sybil slot capture). The proxy names the client; each leaf counts that client's
unreported leases and refuses more past the cap (`edge_gateway/leaf/job_state.py`).

- A request admitted with a token counts against that token: device ids are bound to the
  credential that vouches for them, however many ids it presents. Never against its address:
  phones behind one NAT share it.
- Otherwise (device authentication off, or an allow-list without tokens) it counts against the
  peer's IP address when `per_ip` is set. Off by default: a NAT, or one machine running a
  simulator of many devices, is one address.
"""

from __future__ import annotations

from typing import NamedTuple

from internal_link.calls import ClientLimit


class LeaseCaps(NamedTuple):
    """Unreported leases one client may hold on one leaf: per token, per IP address; 0 = no cap."""

    per_token: int
    per_ip: int

    def limit(self, credential: str | None, address: str) -> ClientLimit | None:
        """The limit for a request admitted with `credential` (None: no token) from `address`."""
        if credential is not None:
            return ClientLimit(credential, self.per_token) if self.per_token else None
        if self.per_ip and address:
            return ClientLimit(f"ip:{address}", self.per_ip)
        return None
