from __future__ import annotations

import pytest

from bridge.speech.dashscope.settings import DashScopeSettings


@pytest.mark.parametrize(
    ("kwargs", "inference", "realtime"),
    [
        ({}, "wss://dashscope.aliyuncs.com/api-ws/v1/inference", None),
        ({"region": "singapore"}, "wss://dashscope-intl.aliyuncs.com/api-ws/v1/inference", None),
        (
            {"region": "singapore", "workspace": "ws1"},
            "wss://ws1.ap-southeast-1.maas.aliyuncs.com/api-ws/v1/inference",
            None,
        ),
        (
            {"base_url": "ws://127.0.0.1:1/"},
            "ws://127.0.0.1:1/api-ws/v1/inference",
            "ws://127.0.0.1:1/api-ws/v1/realtime?model=m",
        ),
    ],
)
def test_endpoints(kwargs, inference, realtime) -> None:
    settings = DashScopeSettings(api_key="k", **kwargs)
    assert settings.inference_url == inference
    if realtime:
        assert settings.realtime_url("m") == realtime


def test_key_from_env_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-secret")
    settings = DashScopeSettings.from_env(workspace="w")
    assert settings.headers() == {"Authorization": "Bearer sk-secret", "X-DashScope-WorkSpace": "w"}
    assert "sk-secret" not in repr(settings)
    with pytest.raises(ValueError, match="not set"):
        DashScopeSettings().headers()
