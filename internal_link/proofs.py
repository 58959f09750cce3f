"""The handshake's cryptography, no I/O: proofs of the shared secret and the per-frame keys.

Both ends prove the secret, each over the same transcript: both nonces and the channel binding
(TLS's `tls-unique` when the link runs over TLS, else empty). A proof is keyed by the secret and
names the role that makes it, so a client's proof cannot be reflected as a server's. Because the
transcript holds a nonce of each side, a proof relayed from another connection does not verify,
and over TLS a relay that terminates TLS on either side changes the binding and fails the proofs.
The same transcript keys each direction's frame seals (`sealing.py`) when TLS does not protect them.
"""

from __future__ import annotations

import hashlib
import hmac

CLIENT = b"client"
SERVER = b"server"
_LABEL = b"edgefl link 2"


def transcript(server_nonce: bytes, client_nonce: bytes, binding: bytes) -> bytes:
    """What both proofs and the frame keys cover; each part length-prefixed, so none can be shifted into another."""
    parts = [_LABEL, server_nonce, client_nonce, binding]
    return b"".join(len(part).to_bytes(2, "big") + part for part in parts)


def proof(secret: bytes, role: bytes, covered: bytes) -> bytes:
    """HMAC-SHA256 under the secret of `role` (CLIENT or SERVER) and the transcript."""
    return hmac.digest(secret, b"proof " + role + covered, hashlib.sha256)


def verify_proof(secret: bytes, role: bytes, covered: bytes, claimed: bytes) -> bool:
    """Constant-time check of a peer's proof."""
    return hmac.compare_digest(proof(secret, role, covered), claimed)


def frame_key(secret: bytes, sender: bytes, covered: bytes) -> bytes:
    """The key sealing the frames `sender` (CLIENT or SERVER) sends on this connection."""
    return hmac.digest(secret, b"seal " + sender + covered, hashlib.sha256)
