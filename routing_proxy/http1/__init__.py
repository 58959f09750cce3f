"""The device-facing HTTP/1.1 server: llhttp parsing (httptools), limits, timeouts, keep-alive.

Why not aiohttp's server: its request and response objects cost about as much CPU per request as
the whole forwarding path (docs/BENCHMARKS.md §1). `messages` is what the dispatcher sees,
`connection` one device's connection (its records in `state`; its streamed bodies both ways in
`body_streams`, `streamed_body` and `upload_body`, its deadline in `deadlines`), `server` the set
of them.
"""

from .limits import HttpLimits
from .messages import (
    BodySink,
    Dispatcher,
    Reply,
    Request,
    Response,
    StreamedResponse,
    Switch,
    UploadRequest,
    invalid_request,
    json_error,
)
from .server import HttpServer

__all__ = [
    "BodySink",
    "Dispatcher",
    "HttpLimits",
    "HttpServer",
    "Reply",
    "Request",
    "Response",
    "StreamedResponse",
    "Switch",
    "UploadRequest",
    "invalid_request",
    "json_error",
]
