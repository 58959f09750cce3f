import pytest

from device_protocol.cookies import CookieSigner
from device_protocol.errors import CookieInvalid

signer = CookieSigner(b"k" * 32)


def test_round_trip_and_protocol_fields():
    cookie = signer.issue("job", "dev", "task", 3, 7)
    assert cookie["model_version"] == 3 and cookie["device_selection_id"] == 7
    assert signer.verify(cookie, "job", "dev", "task") == (3, 7)


@pytest.mark.parametrize(
    "change",
    [
        {"model_version": 4},
        {"device_selection_id": 8},
        {"sig": "0" * 64},
        {"model_version": "3"},
    ],
)
def test_forged_cookie_refused(change):
    cookie = {**signer.issue("job", "dev", "task", 3, 7), **change}
    with pytest.raises(CookieInvalid):
        signer.verify(cookie, "job", "dev", "task")


@pytest.mark.parametrize("job,dev,task", [("other", "dev", "task"), ("job", "thief", "task"), ("job", "dev", "t2")])
def test_cookie_bound_to_job_device_and_task(job, dev, task):
    with pytest.raises(CookieInvalid):
        signer.verify(signer.issue("job", "dev", "task", 3, 7), job, dev, task)


def test_missing_cookie():
    with pytest.raises(CookieInvalid, match="missing"):
        signer.verify(None, "job", "dev", "task")
    with pytest.raises(CookieInvalid, match="missing"):
        signer.verify({}, "job", "dev", "task")


def test_another_key_cannot_verify():
    with pytest.raises(CookieInvalid):
        CookieSigner(b"other").verify(signer.issue("j", "d", "t", 1, 1), "j", "d", "t")
