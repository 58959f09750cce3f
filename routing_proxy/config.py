"""The proxy's one configuration object: CLI flags map onto it 1:1, env vars `EDGEFL_PROXY_*` too."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from internal_link.process import link_secret

from .admission import DEFAULT_SLOTS, MAX_SLOTS, AdmissionControl
from .device_auth import DeviceAuthenticator, parse_lines


class ProxyConfig(BaseSettings):
    """Settings of one routing proxy (all workers share them)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFL_PROXY_", populate_by_name=True, frozen=True)

    host: str = "0.0.0.0"
    # PROTOCOL.md §1: devices are configured with port 4321.
    port: int = Field(4321, ge=0, le=65535)
    lcp_map: Path = Path("lcp_map.json")
    workers: int = Field(1, ge=1)
    # Where /metrics is served (docs/OPERATIONS.md); None: not served. With several
    # workers, worker i serves on metrics_port + i (each counts for itself).
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str | None = None  # None: `host`; e.g. 127.0.0.1 when devices' port faces a LAN

    def metrics_address(self) -> str:
        return self.host if self.metrics_host is None else self.metrics_host

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
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=0)  # of a /result
    max_poll_body_bytes: int = Field(1024 * 1024, ge=0)  # of /job, /task, /selection (any path but /result)
    # Below iOS's 30 s request timeout (PROTOCOL.md §6), so a device gets RETRY rather than an error.
    upstream_timeout: float = Field(25.0, gt=0)
    # Slow clients (slowloris): the whole request head, then the whole body, must arrive in time.
    head_timeout: float = Field(15.0, gt=0)
    body_timeout: float = Field(60.0, gt=0)
    # Phones poll every few seconds; an idle connection is kept as long as nginx's default.
    keepalive_timeout: float = Field(75.0, gt=0)
    # Memory for request bodies, held from a body's head until its answer is written: all
    # connections together, and one connection (its pipelined bodies add up). What does not fit
    # now is answered RETRY at once; a body larger than could ever fit, 413.
    max_buffered_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_connection_buffered_bytes: int = Field(128 * 1024 * 1024, gt=0)
    health_interval: float = Field(1.0, gt=0)
    health_timeout: float = Field(5.0, gt=0)
    # SIGTERM: how long in-flight requests may take to finish before they are cut.
    drain_timeout: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # Device authentication (routing_proxy/device_auth.py): off unless one of these is set.
    auth_tokens_file: Path | None = None  # accepted auth_token values, one per line
    # One more accepted token, from EDGEFL_PROXY_AUTH_TOKEN only: a flag would show it in `ps`.
    auth_token: SecretStr = SecretStr("")
    allowed_devices_file: Path | None = None  # device ids admitted, one per line
    # Unfinished tasks one client may hold on one leaf (routing_proxy/lease_caps.py); 0 = no cap.
    # A token vouches for the devices it is sent with; an address may be a NAT or a simulator.
    max_leases_per_token: int = Field(16, ge=0)
    max_leases_per_ip: int = Field(0, ge=0)
    # Admission control (routing_proxy/admission.py) for the whole proxy; 0 turns a limit off.
    # Workers share the device counts and split the in-flight and rate bounds evenly.
    device_rate: int = Field(0, ge=0)  # requests one device may make per device_window
    device_window: float = Field(60.0, gt=0, le=86400)
    max_inflight: int = Field(0, ge=0)
    max_request_rate: float = Field(0.0, ge=0)  # requests/s admitted in total
    refusal_retry_wait: int = Field(5, ge=1, le=3600)  # seconds; refusals wait this to twice this
    # Counters per row of the device sketch (a power of two, 8 bytes each): size it well above the
    # devices active in one window, or busy devices' counts spill onto well-behaved ones.
    device_slots: int = Field(DEFAULT_SLOTS, ge=2, le=MAX_SLOTS)

    @field_validator("device_slots")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two, not {value}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def secret(self) -> bytes:
        """The link secret as bytes, read from `link_secret_file` when one is set."""
        # Without one, the leaves fall back to the same public secret: a one-machine stack just works.
        return link_secret(self.link_secret.get_secret_value(), self.link_secret_file)

    def device_auth(self) -> DeviceAuthenticator | None:
        """The device authenticator, or None when device authentication is off.

        Reads the token and device files; raises `OSError` when one cannot be read and
        `ValueError` when one is empty or a token is unusable.
        """
        tokens = []
        if self.auth_tokens_file is not None:
            tokens = parse_lines(self.auth_tokens_file.read_text())
            if not tokens:
                raise ValueError(f"{self.auth_tokens_file} holds no token")
        if self.auth_token.get_secret_value():
            tokens.append(self.auth_token.get_secret_value().strip())
        devices = None
        if self.allowed_devices_file is not None:
            devices = parse_lines(self.allowed_devices_file.read_text())
            if not devices:
                raise ValueError(f"{self.allowed_devices_file} holds no device id")
        if not tokens and devices is None:
            return None
        return DeviceAuthenticator(tokens, devices)

    def admission(self, device_counts: bytearray | memoryview | None = None) -> AdmissionControl | None:
        """This worker's admission control, or None when every limit is off.

        `device_counts`: the device-count buffer all workers share (None with one worker).
        """
        if not (self.device_rate or self.max_inflight or self.max_request_rate):
            return None
        return AdmissionControl(
            device_rate=self.device_rate,
            device_window=self.device_window,
            max_inflight=-(-self.max_inflight // self.workers),  # rounded up: never 0, "no bound"
            max_rate=self.max_request_rate / self.workers,
            retry_wait=self.refusal_retry_wait,
            slots=self.device_slots,
            device_counts=device_counts,
        )
