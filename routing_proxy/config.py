"""The proxy's one configuration object: CLI flags map onto it 1:1, env vars `EDGEFL_PROXY_*` too."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProxyConfig(BaseSettings):
    """Settings of one routing proxy (all workers share them)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFL_PROXY_", populate_by_name=True, frozen=True)

    host: str = "0.0.0.0"
    # PROTOCOL.md §1: devices are configured with port 4321.
    port: int = Field(4321, ge=0, le=65535)
    lcp_map: Path = Path("lcp_map.json")
    workers: int = Field(1, ge=1)
    # TLS towards devices.
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    # CA that signs the leaves' certificates; set → the links to leaves use TLS.
    root_ca: Path | None = None
    # Shared with every leaf (ARCHITECTURE.md "The link"); the file wins over the value.
    link_secret: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("EDGEFL_PROXY_LINK_SECRET", "EDGEFL_LINK_SECRET")
    )
    link_secret_file: Path | None = None
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # Below iOS's 30 s request timeout (PROTOCOL.md §6), so a device gets RETRY rather than an error.
    upstream_timeout: float = Field(25.0, gt=0)
    # Slow clients (slowloris): the whole request head, then the whole body, must arrive in time.
    head_timeout: float = Field(15.0, gt=0)
    body_timeout: float = Field(60.0, gt=0)
    # Phones poll every few seconds; an idle connection is kept as long as nginx's default.
    keepalive_timeout: float = Field(75.0, gt=0)
    health_interval: float = Field(1.0, gt=0)
    health_timeout: float = Field(5.0, gt=0)
    # SIGTERM: how long in-flight requests may take to finish before they are cut.
    drain_timeout: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def secret(self) -> bytes:
        """The link secret as bytes, read from `link_secret_file` when one is set."""
        if self.link_secret_file is not None:
            return self.link_secret_file.read_bytes().strip()
        return self.link_secret.get_secret_value().encode()
