"""The device contract in code (PROTOCOL.md), free of I/O."""

# The version of the device contract this code implements; reported by the proxy's and the
# server's health answers so a device or an operator can tell which contract a gateway speaks.
PROTOCOL_VERSION = "1"
