"""The interval a leaf tells live sessions to heartbeat at is a `leaf` flag, as its other settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge_gateway.cli import build_parser, leaf_config


def test_the_session_heartbeat_is_set_by_a_leaf_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEFL_LEAF_SESSION_HEARTBEAT", raising=False)
    assert leaf_config(build_parser().parse_args(["leaf"])).session_heartbeat == 30.0  # PROTOCOL.md §9's default
    assert leaf_config(build_parser().parse_args(["leaf", "--session-heartbeat", "5"])).session_heartbeat == 5.0
    with pytest.raises(ValidationError):  # the CLI answers "invalid settings"
        leaf_config(build_parser().parse_args(["leaf", "--session-heartbeat", "0"]))
