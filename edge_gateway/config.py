"""One typed configuration per service; CLI flags and EDGEFL_* environment variables map onto it."""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl
import uuid
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from internal_link.process import DEVELOPMENT_SECRET, link_secret, public_secret_beyond_loopback
from internal_link.tls import connecting_context, serving_context


class _Settings(BaseSettings):
    link_secret: str = Field(
        default="",
        validation_alias=AliasChoices("link_secret", "EDGEFL_LINK_SECRET"),
        description="shared secret of the internal links (proxy, leaves, server)",
    )
    link_cert: Path | None = Field(default=None, description="TLS certificate (PEM) served on the link port")
    link_key: Path | None = Field(default=None, description="its private key, unless in link_cert")

    def link_tls(self) -> ssl.SSLContext | None:
        """TLS for the link port this process serves, when a certificate is configured."""
        if self.link_cert is None:
            return None
        return serving_context(self.link_cert, self.link_key)

    def public_secret_host(self, hosts: list[str]) -> str | None:
        """The first of `hosts` beyond loopback when the links would use the public development secret."""
        return public_secret_beyond_loopback(self.link_secret.encode() or DEVELOPMENT_SECRET, hosts)

    def secret_bytes(self) -> bytes:
        return link_secret(self.link_secret)

    def cookie_key(self) -> bytes:
        # Every leaf must verify every other leaf's cookies (a device moves when its leaf dies).
        return hmac.new(self.secret_bytes(), b"edgefl task cookies", hashlib.sha256).digest()


class ServerConfig(_Settings):
    model_config = SettingsConfigDict(env_prefix="EDGEFL_SERVER_", env_file=None, extra="ignore")

    host: str = Field(default="127.0.0.1", description="where the leaves' link listens")
    api_host: str = Field(default="127.0.0.1", description="where the job API listens (its own address)")
    http_port: int = Field(default=8443, ge=0, le=65535, description="job API and status")
    # The job API's bearer token; one variable name for the server and the `job` CLI.
    api_token: str = Field(
        default="",
        validation_alias=AliasChoices("api_token", "EDGEFL_SERVER_API_TOKEN", "EDGEFL_API_TOKEN"),
        description="bearer token the job API asks for (empty: none, loopback only)",
    )
    link_port: int = Field(default=8002, ge=0, le=65535, description="where leaves connect")
    # /metrics is always on http_port; this adds a listener serving only it, for a monitoring
    # network that must not reach the (unauthenticated) job API.
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="also serve /metrics here")
    metrics_host: str | None = Field(default=None, description="address that listener uses (None: host)")
    data_dir: Path = Path("edgefl-data/server")
    tick_interval: float = 0.5
    proxy_url: str | None = Field(
        default=None, pattern=r"^https?://", description="the routing proxy whose /health the status page shows"
    )
    retire_after: float = Field(
        default=3600.0,
        ge=0.0,
        description="seconds a finished job stays in memory and in leaf syncs; then on disk only",
    )


class LeafConfig(_Settings):
    model_config = SettingsConfigDict(env_prefix="EDGEFL_LEAF_", env_file=None, extra="ignore")

    # Empty: this machine's name and the leaf's port, so two leaves started without --name never
    # share one (the server refuses a second live leaf under a name: leaf_names.py).
    name: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=9003, ge=0, le=65535, description="where the proxy connects")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve Prometheus /metrics on this port (None: off)"
    )
    metrics_host: str | None = Field(default=None, description="address /metrics listens on (None: host)")
    server_host: str = "127.0.0.1"
    server_port: int = Field(default=8002, ge=0, le=65535)
    server_ca: Path | None = Field(
        default=None, description="CA of the server's link certificate; set → TLS to the server"
    )
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

    payload_cache_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="task payloads held, all jobs together; past it the least recently served are evicted "
        "and fetched again when asked for",
    )

    xain_host: str | None = Field(default=None, description="address of the xain-sdk 0.6 ports (default: host)")
    xain_grpc_port: int | None = Field(
        default=None, ge=0, le=65535, description="xain-sdk 0.6 gRPC coordinator (needs edgefl[xain]); unset: none"
    )
    xain_object_port: int | None = Field(
        default=None, ge=0, le=65535, description="xain-sdk 0.6 S3-compatible object endpoint, with xain_grpc_port"
    )

    @model_validator(mode="after")
    def _xain_ports_together(self) -> LeafConfig:
        if (self.xain_grpc_port is None) != (self.xain_object_port is None):
            raise ValueError("xain_grpc_port and xain_object_port go together: 0.6 participants need both")
        return self

    def server_tls(self) -> ssl.SSLContext | None:
        """TLS for the link to the server, when its CA is configured."""
        return None if self.server_ca is None else connecting_context(self.server_ca)

    @model_validator(mode="after")
    def _default_name(self) -> LeafConfig:
        if not self.name:
            # Port 0 is picked when binding, after the name is needed: a random suffix instead.
            suffix = str(self.port) if self.port else uuid.uuid4().hex[:8]
            self.name = f"{socket.gethostname()}-{suffix}"
        return self

    def result_log_dir(self) -> Path:
        """Where the result log lives: one directory per leaf, never shared."""
        return (self.data_dir or Path("edgefl-data") / self.name) / "results"
