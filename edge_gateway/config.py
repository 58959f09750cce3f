"""One typed configuration per service; CLI flags and EDGEFL_* environment variables map onto it."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from internal_link.process import link_secret


class _Settings(BaseSettings):
    link_secret: str = Field(
        default="",
        validation_alias=AliasChoices("link_secret", "EDGEFL_LINK_SECRET"),
        description="shared secret of the internal links (proxy, leaves, server)",
    )

    def secret_bytes(self) -> bytes:
        return link_secret(self.link_secret)

    def cookie_key(self) -> bytes:
        # Every leaf must verify every other leaf's cookies (a device moves when its leaf dies).
        return hmac.new(self.secret_bytes(), b"edgefl task cookies", hashlib.sha256).digest()


class ServerConfig(_Settings):
    model_config = SettingsConfigDict(env_prefix="EDGEFL_SERVER_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    http_port: int = Field(default=8443, ge=0, le=65535, description="job API and status")
    link_port: int = Field(default=8002, ge=0, le=65535, description="where leaves connect")
    data_dir: Path = Path("edgefl-data/server")
    tick_interval: float = 0.5


class LeafConfig(_Settings):
    model_config = SettingsConfigDict(env_prefix="EDGEFL_LEAF_", env_file=None, extra="ignore")

    name: str = "leaf-0"
    host: str = "127.0.0.1"
    port: int = Field(default=9003, ge=0, le=65535, description="where the proxy connects")
    server_host: str = "127.0.0.1"
    server_port: int = Field(default=8002, ge=0, le=65535)
    sync_interval: float = Field(default=0.2, gt=0.0)
    quota_hold: float = Field(default=0.5, ge=0.0, description="seconds a /task may wait for a free slot")
    data_dir: Path | None = Field(default=None, description="this leaf's own directory (default edgefl-data/NAME)")
    result_log: bool = Field(
        default=True,
        description="acknowledge results once on disk; False keeps them in memory only (benchmarks, never in service)",
    )
    drain_timeout: float = Field(default=8.0, ge=0.0, description="SIGTERM: seconds to answer what is in flight")
    session_heartbeat: float = Field(
        default=30.0, gt=0.0, description="live sessions: seconds between a device's messages (silent 3x: gone)"
    )
    max_sessions: int = Field(default=100_000, ge=0, description="live sessions this leaf takes; more hear `later`")

    def result_log_dir(self) -> Path:
        """Where the result log lives: one directory per leaf, never shared."""
        return (self.data_dir or Path("edgefl-data") / self.name) / "results"
