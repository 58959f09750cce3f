"""Device authentication: tokens in every X-Flare-User-Info shape, the allow-list, and its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routing_proxy.cli import load_config, main
from routing_proxy.config import ProxyConfig
from routing_proxy.device_auth import DeviceAuthenticator, parse_lines

TOKEN = "k3Y-0123456789abcdef"


@pytest.mark.parametrize(
    "header",
    [
        f"user_id=default_user&auth_token={TOKEN}",  # Android: raw query string
        f"auth_token={TOKEN.replace('-', '%2D')}&user_name=a+b",  # urlencoded
        json.dumps({"user_id": "u", "auth_token": TOKEN}),  # iOS: a JSON object string
        f"user_id=None&auth_token={TOKEN}&access_token=None",  # Python simulator's `None` fields
    ],
)
def test_token_in_any_header_shape_is_admitted(header: str) -> None:
    assert DeviceAuthenticator([TOKEN]).check("D", header) is None


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "auth_token missing from X-Flare-User-Info"),
        ("", "auth_token missing from X-Flare-User-Info"),
        ("{}", "auth_token missing from X-Flare-User-Info"),  # iOS today
        ("user_id=default_user", "auth_token missing from X-Flare-User-Info"),
        ("auth_token=None", "auth_token missing from X-Flare-User-Info"),
        ("auth_token=wrong", "invalid auth_token"),
        (f"auth_token={TOKEN}x", "invalid auth_token"),
        (json.dumps({"auth_token": 12}), "invalid auth_token"),
        ('{"auth_token": ', "auth_token missing: X-Flare-User-Info is neither a query string nor a JSON object"),
        ("auth_token=\udcff", "invalid auth_token"),  # undecodable header bytes never raise
    ],
)
def test_missing_or_wrong_token_is_refused(header: str | None, reason: str) -> None:
    assert DeviceAuthenticator([TOKEN]).check("D", header) == reason


def test_any_configured_token_is_accepted_and_only_digests_are_kept() -> None:
    auth = DeviceAuthenticator(["first", "second"])
    assert auth.check("D", "auth_token=first") is None
    assert auth.check("D", "auth_token=second") is None
    assert "first" not in repr(vars(auth))


def test_allow_list() -> None:
    auth = DeviceAuthenticator(allowed_devices=["NVFlare_Android-0123", "ios-1"])
    assert auth.check("ios-1", None) is None
    assert auth.check(" ios-1 ", None) is None  # the leaf strips the id too
    assert auth.check("ios-2", f"auth_token={TOKEN}") == "device not allowed"


def test_token_and_allow_list_are_both_required() -> None:
    auth = DeviceAuthenticator([TOKEN], allowed_devices=["ios-1"])
    assert auth.check("ios-1", f"auth_token={TOKEN}") is None
    assert auth.check("ios-1", "auth_token=nope") == "invalid auth_token"
    assert auth.check("ios-2", f"auth_token={TOKEN}") == "device not allowed"


def test_nothing_configured_admits_everyone() -> None:
    assert DeviceAuthenticator().check("anyone", None) is None


@pytest.mark.parametrize("token", ["has space", "a+b", "a&b", "a=b", "100%", "ünïcode", ""])
def test_tokens_clients_cannot_send_intact_are_refused_at_start(token: str) -> None:
    with pytest.raises(ValueError, match="number \\[2\\]"):
        DeviceAuthenticator(["fine", token])


def test_parse_lines() -> None:
    assert parse_lines("# tokens\n a \n\nb\r\n#c\n") == ["a", "b"]


def test_config_off_by_default() -> None:
    assert ProxyConfig().device_auth() is None


def test_config_reads_files_and_env_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, devices = tmp_path / "tokens", tmp_path / "devices"
    tokens.write_text("# issued 2024\nfrom-file\n")
    devices.write_text("ios-1\nandroid-1\n")
    monkeypatch.setenv("EDGEFL_PROXY_AUTH_TOKEN", "from-env")
    config = load_config(
        ["4321", "lcp.json", "--auth-tokens-file", str(tokens), "--allowed-devices-file", str(devices)]
    )
    assert (config.auth_tokens_file, config.allowed_devices_file) == (tokens, devices)
    auth = config.device_auth()
    assert auth is not None
    assert auth.check("ios-1", "auth_token=from-file") is None
    assert auth.check("android-1", "auth_token=from-env") is None
    assert auth.check("other", "auth_token=from-env") == "device not allowed"


def test_env_token_alone_turns_auth_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFL_PROXY_AUTH_TOKEN", TOKEN)
    auth = ProxyConfig().device_auth()
    assert auth is not None
    assert auth.check("D", None) == "auth_token missing from X-Flare-User-Info"


@pytest.mark.parametrize("which", ["--auth-tokens-file", "--allowed-devices-file"])
def test_cli_refuses_empty_or_missing_files_before_serving(
    which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lcp = tmp_path / "lcp_map.json"
    lcp.write_text(json.dumps({"C11": {"host": "127.0.0.1", "port": 9}}))
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    assert main(["0", str(lcp), "--host", "127.0.0.1", which, str(empty)]) == 2
    assert "holds no" in capsys.readouterr().err
    assert main(["0", str(lcp), "--host", "127.0.0.1", which, str(tmp_path / "absent")]) == 2
    assert "No such file" in capsys.readouterr().err
