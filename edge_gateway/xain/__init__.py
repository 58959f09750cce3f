"""Serving XAIN's participant SDKs (docs/XAIN.md): the parts that need gRPC or other I/O libraries.

The pure model formats are in `device_protocol.xain`. Nothing here is imported unless a XAIN
listener is configured, so a machine without the `xain` extra never needs grpcio.
"""
