"""Broken peers: a dead provider, a provider that drops the stream, a client that walks away.
The proxy answers in the provider's format where it can and keeps serving."""

import uuid
from collections.abc import Iterator

import httpx
import pytest

from controlplane.recording.records import CallOutcome
from tests.conftest import DEAD_PROVIDER, RunningProxy, running_proxy
from tests.fake_provider import FakeProvider
from tests.recorded import recorded
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


@pytest.fixture(scope="module")
def impatient(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """A proxy that gives up on a provider silent for one second."""
    root = tmp_path_factory.mktemp("impatient")
    with running_proxy("impatient", fake, root, ["--upstream-timeout", "1"]) as running:
        yield running


@pytest.mark.parametrize("api", ENDPOINTS)
async def test_a_provider_silent_past_the_timeout_gets_a_provider_format_504(
    impatient: RunningProxy, fake: FakeProvider, api: str
) -> None:
    word = f"tag{uuid.uuid4().hex[:12]}"
    with client_for(impatient) as client:
        response = client.post(ENDPOINTS[api][0], json=body(api, f"{word} [scenario:gated]", False))
    fake.release(-1)
    assert response.status_code == 504
    message = response.json()["error"]["message"]
    assert message == "Luthien gave up waiting for " + ENDPOINTS[api][0].split("/")[2] + ": ReadTimeout"
    if api == "messages":
        assert response.json()["type"] == "error"
    (record,) = await recorded(impatient.database_url, word, 1)
    assert record.outcome is CallOutcome.ERROR and record.status == 504 and record.error == message
    assert_still_serving(impatient)


async def test_a_stream_silent_past_the_timeout_is_cut_and_recorded(
    impatient: RunningProxy, fake: FakeProvider
) -> None:
    word = f"tag{uuid.uuid4().hex[:12]}"
    received = bytearray()
    with (
        client_for(impatient) as client,
        pytest.raises(httpx.RemoteProtocolError),
        client.stream(
            "POST", ENDPOINTS["messages"][0], json=body("messages", f"{word} [scenario:gated]", True)
        ) as r,
    ):
        for data in r.iter_bytes():  # the first event, then a silence the proxy ends
            received.extend(data)
    fake.release(-1)
    assert received.startswith(b"event: message_start")
    (record,) = await recorded(impatient.database_url, word, 1)
    assert record.outcome is CallOutcome.ERROR and record.status == 200
    assert record.error == "the provider's stream broke off: ReadTimeout"
