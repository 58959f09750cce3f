"""Which client a task request counts against (routing_proxy/lease_caps.py)."""

import pytest
from pydantic import ValidationError

from internal_link.calls import ClientLimit
from routing_proxy.cli import load_config
from routing_proxy.device_auth import DeviceAuthenticator
from routing_proxy.lease_caps import LeaseCaps


def test_a_token_is_capped_per_token_never_per_address():
    caps = LeaseCaps(per_token=3, per_ip=1)
    assert caps.limit("token:abc", "10.0.0.1") == ClientLimit("token:abc", 3)
    assert LeaseCaps(per_token=0, per_ip=1).limit("token:abc", "10.0.0.1") is None


def test_without_a_token_the_address_is_capped_when_asked_to():
    assert LeaseCaps(per_token=3, per_ip=2).limit(None, "10.0.0.1") == ClientLimit("ip:10.0.0.1", 2)
    assert LeaseCaps(per_token=3, per_ip=0).limit(None, "10.0.0.1") is None
    assert LeaseCaps(per_token=3, per_ip=2).limit(None, "") is None  # no peer address: nothing to count


def test_admission_names_the_token_by_a_digest_prefix():
    auth = DeviceAuthenticator(["alpha", "beta"])
    alpha, beta = auth.admit("D", "auth_token=alpha"), auth.admit("D", '{"auth_token": "beta"}')
    assert alpha.reason is None and beta.reason is None
    assert alpha.credential != beta.credential and alpha.credential == auth.admit("E", "auth_token=alpha").credential
    assert auth.admit("D", "auth_token=gamma") == ("invalid auth_token", None)
    assert DeviceAuthenticator([], ["D"]).admit("D", None) == (None, None)  # an allow-list binds no token


def test_the_flags_set_the_caps_and_refuse_negative_ones():
    assert (load_config([]).max_leases_per_token, load_config([]).max_leases_per_ip) == (16, 0)
    config = load_config(["--max-leases-per-token", "3", "--max-leases-per-ip", "5"])
    assert (config.max_leases_per_token, config.max_leases_per_ip) == (3, 5)
    with pytest.raises(ValidationError):
        load_config(["--max-leases-per-ip", "-1"])
