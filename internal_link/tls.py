"""The TLS contexts of the link's ends, from the files the processes are given."""

from __future__ import annotations

import ssl
from pathlib import Path


def serving_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """For a `LinkServer`: present `cert` (a PEM chain; the key in it or in `key`).

    Raises `OSError` (an `ssl.SSLError` included) when the files cannot be used.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def connecting_context(ca: Path) -> ssl.SSLContext:
    """For a `LinkClient`: accept only a server whose certificate `ca` signed, for the host dialled.

    Raises `OSError` (an `ssl.SSLError` included) when the file cannot be used.
    """
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
