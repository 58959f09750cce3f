"""Live sessions over WebSocket on the proxy's port (PROTOCOL.md §9): `handshake` (the upgrade, no
I/O), `relay` (one session's socket and its messages to and from the leaf), `hub` (this process's
sessions and the push poll per leaf)."""
