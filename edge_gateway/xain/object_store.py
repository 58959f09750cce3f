"""The S3-compatible object endpoint xain-sdk 0.6 participants read and write (docs/XAIN.md).

Path-style only, as boto3 sends it to a configured endpoint: `HEAD`/`GET /{bucket}/{round}/global`
is the pickled flat vector of model version `round` while that version is served (ranged GETs
too: boto3 fetches objects over 8 MiB in parts); `PUT /{bucket}/{round}/{uuid}` keeps a
participant's upload, unread, until its EndTrainingRound takes it (coordinator06.py), where it
is unpickled through the allow-list only. Any bucket name is accepted, and requests are not
signature-checked (docs/THREAT_MODEL.md). Refusals are JSON `{"status": "ERROR", "message"}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import OrderedDict
from email.utils import formatdate

import orjson
from aiohttp import web

from device_protocol.xain.flat_weights import flat_length
from device_protocol.xain.pickle_writer import pickle_from_flat_vector

from ..leaf.xain_endpoints import XainEndpoints, max_upload_bytes

log = logging.getLogger(__name__)

# Uploads kept waiting for their EndTrainingRound, in count and bytes; the oldest go first.
MAX_OBJECTS = 10_000
MAX_STORED_BYTES = 512 * 1024 * 1024
KEY = re.compile(r"(?P<round>[0-9]{1,9})/(?P<name>[A-Za-z0-9._-]{1,100})")
RANGE = re.compile(r"bytes=(?P<first>[0-9]+)-(?P<last>[0-9]*)")


def _etag(data: bytes) -> str:
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'  # S3's ETag of a single-part object


class _Object:
    __slots__ = ("data", "etag", "modified")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.etag = _etag(data)
        self.modified = formatdate(usegmt=True)


def _refused(status: int, message: str) -> web.Response:
    log.info("object endpoint refused a request: %s", message)
    return web.Response(
        status=status, body=orjson.dumps({"status": "ERROR", "message": message}), content_type="application/json"
    )


class ObjectStore:
    """The endpoint's aiohttp application and the uploads waiting to be taken."""

    def __init__(self, xain: XainEndpoints) -> None:
        self._xain = xain
        self._uploads: OrderedDict[str, bytes] = OrderedDict()
        self._stored_bytes = 0
        self._global: tuple[str, int, _Object] | None = None  # job id, version, its pickle
        self.refused = 0
        self.app = web.Application(client_max_size=0)  # sizes are checked against the model first
        self.app.router.add_get("/{bucket}/{key:.+}", self.get)  # HEAD too
        self.app.router.add_route("PUT", "/{bucket}/{key:.+}", self.put)

    def take(self, key: str) -> bytes | None:
        """The upload at `key` (`{round}/{uuid}`), removed from the store; None if none was written."""
        data = self._uploads.pop(key, None)
        self._stored_bytes -= len(data or b"")
        return data

    def _refuse(self, status: int, message: str) -> web.Response:
        self.refused += 1
        return _refused(status, message)

    async def get(self, request: web.Request) -> web.StreamResponse:
        key = KEY.fullmatch(request.match_info["key"])
        if key is None or key["name"] != "global":
            return self._refuse(404, f"NoSuchKey: only {{round}}/global can be read, not {request.match_info['key']!r}")
        found = await self._global_object(int(key["round"]))
        if found is None:
            return self._refuse(404, f"NoSuchKey: model version {key['round']} is not served")
        headers = {"ETag": found.etag, "Last-Modified": found.modified, "Accept-Ranges": "bytes"}
        data, status = found.data, 200
        wanted = request.headers.get("Range")
        if wanted is not None:
            part = RANGE.fullmatch(wanted.strip())
            first = int(part["first"]) if part else len(data)
            last = min(int(part["last"]) if part and part["last"] else len(data) - 1, len(data) - 1)
            if first > last:
                return self._refuse(416, f"range {wanted!r} is outside the object's {len(data)} bytes")
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            data, status = data[first : last + 1], 206
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=status, headers=headers, content_type="application/octet-stream")
        return web.Response(status=status, headers=headers, body=data, content_type="application/octet-stream")

    async def _global_object(self, version: int) -> _Object | None:
        job = self._xain.open_job()
        if job is None or job.view.model_version != version:
            return None
        cached = self._global
        if cached is not None and cached[:2] == (job.view.job_id, version):
            return cached[2]
        current = await self._xain.global_of(job)
        if current is None or current.version != version:
            return None
        made = _Object(pickle_from_flat_vector(current.vector))
        self._global = (job.view.job_id, version, made)
        return made

    async def put(self, request: web.Request) -> web.Response:
        key = KEY.fullmatch(request.match_info["key"])
        if key is None or key["name"] == "global":
            return self._refuse(403, "AccessDenied: participants write {round}/{uuid} only")
        job = self._xain.open_job()
        if job is None:
            return self._refuse(409, "no job takes XAIN participants now")
        limit = max_upload_bytes(flat_length(job.view.param_shapes))
        length = request.content_length
        if length is None:
            return self._refuse(411, "Content-Length is required")
        if length > limit:
            job.refused += 1
            return self._refuse(413, f"object of {length} bytes, a model of this job needs at most {limit}")
        try:
            data = await request.content.readexactly(length)
        except asyncio.IncompleteReadError:
            return self._refuse(400, f"body ended before its Content-Length of {length} bytes")
        self.take(request.match_info["key"])  # written again: the new one replaces it
        self._uploads[request.match_info["key"]] = data
        self._stored_bytes += len(data)
        while len(self._uploads) > MAX_OBJECTS or self._stored_bytes > MAX_STORED_BYTES:
            _, dropped = self._uploads.popitem(last=False)
            self._stored_bytes -= len(dropped)
        return web.Response(status=200, headers={"ETag": _etag(data)})
