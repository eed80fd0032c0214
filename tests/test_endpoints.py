"""The endpoint table: its lookup, path spellings, and its copy in docs/architecture.md."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.endpoints import ENDPOINTS, Endpoint, Treatment, UnsafePath, canonical_path, resolve
from tests.conftest import ROOT


def concrete(template: str) -> str:
    return template.replace("{id}", "resp_AbC-123").replace("/**", "/x")


def test_the_architecture_doc_shows_the_table_as_the_code_has_it() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (\S+) \| `([^`]+)` \| ([a-z-]+) \| (.+) \|$", doc, re.MULTILINE)
    assert rows == [
        (e.family.value, "any" if e.method == "*" else e.method, e.template, e.treatment.value, e.note)
        for e in ENDPOINTS
    ]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.template}")
def test_every_endpoint_is_found_for_its_method(endpoint: Endpoint) -> None:
    method = "POST" if endpoint.method == "*" else endpoint.method
    route = resolve(method, concrete(endpoint.template) + "?beta=true")
    assert route.endpoint is endpoint
    assert route.treatment is endpoint.treatment
    assert route.path == concrete(endpoint.template) + "?beta=true"


def test_a_known_path_with_another_method_is_refused_and_head_is_forwarded() -> None:
    refused = resolve("PUT", "/v1/chat/completions")
    assert refused.treatment is Treatment.REFUSED and refused.wrong_method
    assert resolve("HEAD", "/v1/messages").treatment is Treatment.FORWARDED
    assert resolve("POST", "/v1/not_a_known_api").treatment is None


def test_an_exact_path_wins_over_a_prefix_and_an_id() -> None:
    assert resolve("POST", "/v1/responses/compact").treatment is Treatment.POLICED
    assert resolve("GET", "/v1/responses/compact").treatment is Treatment.RETRIEVAL  # an id, then
    assert resolve("POST", "/v1/messages/batches").treatment is Treatment.REFUSED


_known = st.sampled_from([e for e in ENDPOINTS if "{id}" not in e.template and "**" not in e.template])


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, str, str]:
    """A known path's method, the path, and a spelling of it servers read the same way."""
    endpoint = draw(_known)
    parts: list[str] = []
    for segment in endpoint.template.strip("/").split("/"):
        spelled = "".join(
            f"%{ord(c):02X}" if draw(st.booleans()) and draw(st.booleans()) else c
            for c in (segment.upper() if draw(st.booleans()) else segment)
        )
        parts += [*draw(st.sampled_from([[], ["."], ["x", ".."], [""]])), spelled]
    method = "POST" if endpoint.method == "*" else endpoint.method
    return method, endpoint.template, "/" + "/".join(parts) + draw(st.sampled_from(["", "/"]))


@settings(max_examples=300, deadline=None)
@given(spelling=spellings())
def test_every_spelling_of_a_known_path_is_that_endpoint(spelling: tuple[str, str, str]) -> None:
    # By the endpoint's own method: another may belong to a `/**` entry that matches too.
    method, template, raw = spelling
    route = resolve(method, raw + "?q=1")
    assert route.path == template + "?q=1"
    assert canonical_path(canonical_path(raw)) == canonical_path(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "/v1%2Fmessages",
        "/v1/messages%5C",
        "/v1/%25messages",
        "/v1/messages%00",
        "/v1/messages;x=1",
        "/v1\\messages",
        "/../v1/messages",
        "/v1/mess\u00e4ges",
        "/v1/messages\x7f",
        "v1/messages",
        "/v1/%zz",
    ],
)
def test_ambiguous_spellings_are_refused(raw: str) -> None:
    with pytest.raises(UnsafePath):
        resolve("POST", raw)
