from urllib.parse import parse_qs, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_protocol.errors import InvalidRequest
from device_protocol.headers import device_identity, parse_info


def test_query_string_urlencoded_and_raw_spaces():
    assert parse_info("device_id=D&platform=ios&app_version=1.0", "h") == {
        "device_id": "D",
        "platform": "ios",
        "app_version": "1.0",
    }
    # Android sends raw spaces; '+' is a space and %XX is decoded like parse_qs.
    assert parse_info("app_name=My App&user_name=a+b&x=%41%20c", "h") == {
        "app_name": "My App",
        "user_name": "a b",
        "x": "A c",
    }


def test_query_string_drops_blank_none_and_bare_pieces():
    info = parse_info("device_id=D&app_name=&platform=None&flag&platform_version=17", "h")
    assert info == {"device_id": "D", "platform_version": "17"}


def test_json_object_shape_from_ios():
    info = parse_info('{"device_id":"D","platform":"ios","app_version":"1.0","n":3}', "h")
    assert info == {"device_id": "D", "platform": "ios", "app_version": "1.0", "n": "3"}


@pytest.mark.parametrize("value", ["", "   ", "{}"])
def test_empty_shapes(value):
    assert parse_info(value, "h") == {}


@pytest.mark.parametrize("value", ["{not json", '{"a":1', "{1: 2}"])
def test_broken_json_info_is_invalid_request(value):
    with pytest.raises(InvalidRequest) as err:
        parse_info(value, "X-Flare-Device-Info")
    assert "X-Flare-Device-Info" in err.value.message


@given(
    st.dictionaries(
        st.text(min_size=1).filter(lambda k: k != "None"), st.text(min_size=1).filter(lambda v: v != "None"), max_size=6
    )
)
def test_query_strings_parse_like_parse_qs(fields):
    encoded = urlencode(fields)
    expected = {k: v[0] for k, v in parse_qs(encoded).items() if v[0] != "None"}
    assert parse_info(encoded, "h") == expected


@given(st.text(max_size=200))
def test_parse_info_never_raises_anything_but_invalid_request(text):
    try:
        info = parse_info(text, "h")
    except InvalidRequest:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.items())


def test_identity_from_headers():
    device_id, info, user = device_identity(
        {"x-flare-device-id": "D", "x-flare-device-info": "platform=android", "x-flare-user-info": "{}"}
    )
    assert (device_id, info, user) == ("D", {"platform": "android", "device_id": "D"}, {})


@pytest.mark.parametrize("headers", [{}, {"x-flare-device-id": ""}, {"x-flare-device-id": "  "}])
def test_device_id_missing(headers):
    with pytest.raises(InvalidRequest) as err:
        device_identity(headers)
    assert err.value.message == "Device ID missing"


def test_device_id_mismatch():
    with pytest.raises(InvalidRequest) as err:
        device_identity({"x-flare-device-id": "A", "x-flare-device-info": "device_id=B"})
    assert err.value.message == "Device ID mismatch: X-Flare-Device-ID does not match X-Flare-Device-Info"
