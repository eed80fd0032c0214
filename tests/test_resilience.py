"""Broken peers: a dead provider, a provider that drops the stream, a client that walks away.
The proxy answers in the provider's format where it can and keeps serving."""

import httpx
import pytest

from tests.conftest import DEAD_PROVIDER, RunningProxy
from tests.fake_provider import FakeProvider
from tests.test_wire_fidelity import ENDPOINTS, body, client_for


def assert_still_serving(proxy: RunningProxy) -> None:
    with client_for(proxy) as client:
        response = client.post(ENDPOINTS["chat"][0], json=body("chat", "still there?", False))
    assert response.status_code == 200


def test_a_dead_provider_gets_a_provider_format_502(noop: RunningProxy) -> None:
    with client_for(noop) as client:
        response = client.post(f"https://{DEAD_PROVIDER}/v1/chat/completions", json=body("chat", "hi", True))
        assert response.status_code == 502
        error = response.json()["error"]
        assert f"could not reach {DEAD_PROVIDER}" in error["message"]
        passthrough = client.get(f"https://{DEAD_PROVIDER}/v1/models")
        assert passthrough.status_code == 502
    assert_still_serving(noop)


@pytest.mark.parametrize("api", ENDPOINTS)
@pytest.mark.parametrize("proxy_name", ["noop", "blocklist", "uppercase"])
def test_a_stream_the_provider_drops_is_dropped_for_the_client_too(
    proxies: dict[str, RunningProxy], fake: FakeProvider, api: str, proxy_name: str
) -> None:
    proxy = proxies[proxy_name]
    received = bytearray()
    payload = body(api, "[scenario:cut]", True)
    with (
        client_for(proxy) as client,
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", ENDPOINTS[api][0], json=payload) as response,
    ):
        assert response.status_code == 200
        for data in response.iter_bytes():
            received.extend(data)
    assert received, "the events before the cut reach the client"
    if proxy_name == "noop":
        assert bytes(received) == fake.sent(-1)
    assert_still_serving(proxy)


def test_a_client_that_leaves_mid_stream_does_not_disturb_the_proxy(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    with (
        client_for(noop) as client,
        client.stream(
            "POST", ENDPOINTS["messages"][0], json=body("messages", "[scenario:gated]", True)
        ) as response,
    ):
        next(response.iter_bytes())
        # Closed after the first event, while the provider still holds the rest.
    fake.release(-1)
    assert_still_serving(noop)
    assert "Traceback" not in noop.log()
