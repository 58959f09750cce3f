import msgpack
import pytest

from device_protocol.codecs import decode_body, encode, media_type
from device_protocol.errors import MalformedBody, UnsupportedMediaType


def test_json_with_and_without_charset_and_empty():
    assert decode_body("application/json; charset=utf-8", b'{"a": 1}') == {"a": 1}
    assert decode_body("application/json", b"") == {}
    assert media_type("Application/JSON ; charset=UTF-8") == "application/json"


def test_msgpack_body_keeps_bytes():
    assert decode_body("application/msgpack", msgpack.packb({"d": b"\x00\x01"}, use_bin_type=True)) == {
        "d": b"\x00\x01"
    }


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b'"s"', b"\xff\xfe", b"[" * 10000 + b"]" * 10000])
def test_malformed_json(body):
    with pytest.raises(MalformedBody):
        decode_body("application/json", body)


def test_unsupported_media_type():
    with pytest.raises(UnsupportedMediaType) as err:
        decode_body("text/plain", b"hi")
    assert err.value.http_status == 415


def test_encode():
    assert encode({"status": "OK"}) == ("application/json", b'{"status":"OK"}')
    ctype, body = encode({"status": "OK"}, msgpack_wanted=True)
    assert ctype == "application/msgpack" and msgpack.unpackb(body) == {"status": "OK"}


def test_huge_numbers_parse_and_are_judged_later():
    # A huge integer becomes a float; 1e400 becomes inf, which decode_update refuses as non-finite.
    body = decode_body("application/json", b'{"n": 123456789012345678901234567890}')
    assert body["n"] > 1e29
