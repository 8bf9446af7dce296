"""Where and as whom to reach DashScope: region endpoints and the API key, as plain settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: Shared gateways per region; API keys are region-bound, so the key and the region must match.
REGION_HOSTS: dict[str, str] = {
    "beijing": "wss://dashscope.aliyuncs.com",
    "singapore": "wss://dashscope-intl.aliyuncs.com",
    "hongkong": "wss://cn-hongkong.dashscope.aliyuncs.com",
}

#: Region names used in workspace-scoped MaaS hosts (``{workspace}.{region}.maas.aliyuncs.com``).
WORKSPACE_REGIONS: dict[str, str] = {
    "beijing": "cn-beijing",
    "singapore": "ap-southeast-1",
    "hongkong": "cn-hongkong",
    "virginia": "us-east-1",
    "frankfurt": "eu-central-1",
    "tokyo": "ap-northeast-1",
}

INFERENCE_PATH = "/api-ws/v1/inference"
REALTIME_PATH = "/api-ws/v1/realtime"


@dataclass(frozen=True, slots=True)
class DashScopeSettings:
    """Connection settings shared by every DashScope client.

    ``base_url`` overrides the region (an emulator, a proxy); ``workspace`` selects the
    workspace-scoped gateway and is also sent as ``X-DashScope-WorkSpace``.
    """

    api_key: str = field(default="", repr=False)
    region: str = "beijing"
    workspace: str | None = None
    base_url: str | None = None
    connect_timeout: float = 5.0
    max_handshake_retries: int = 3  # extra attempts after HTTP 429
    backoff_initial: float = 0.5
    backoff_factor: float = 2.0

    @classmethod
    def from_env(cls, **overrides: object) -> DashScopeSettings:
        """Read ``DASHSCOPE_API_KEY`` (and optional region/base URL) from the environment."""
        values: dict[str, object] = {
            "api_key": os.environ.get("DASHSCOPE_API_KEY", ""),
            "region": os.environ.get("DASHSCOPE_REGION", "beijing"),
            "base_url": os.environ.get("DASHSCOPE_BASE_URL") or None,
            "workspace": os.environ.get("DASHSCOPE_WORKSPACE") or None,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def host(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.workspace:
            region = WORKSPACE_REGIONS.get(self.region)
            if region is None:
                raise ValueError(f"unknown DashScope region {self.region!r}")
            return f"wss://{self.workspace}.{region}.maas.aliyuncs.com"
        try:
            return REGION_HOSTS[self.region]
        except KeyError:
            raise ValueError(f"unknown DashScope region {self.region!r}") from None

    @property
    def inference_url(self) -> str:
        return self.host + INFERENCE_PATH

    def realtime_url(self, model: str) -> str:
        return f"{self.host}{REALTIME_PATH}?model={model}"

    def headers(self) -> dict[str, str]:
        if not self.api_key:
            raise ValueError("DashScope API key is not set (DASHSCOPE_API_KEY)")
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if self.workspace:
            headers["X-DashScope-WorkSpace"] = self.workspace
        return headers
