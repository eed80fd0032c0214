"""Static, offline checks of the deployment files: docker-compose.yaml against the Compose
Specification schema (shipped by check-jsonschema), every Kubernetes manifest reachable from a
kustomization against the Kubernetes JSON schemas (shipped by kubernetes-validate), and the
policies every container must follow. Nothing here needs Docker, kustomize or a cluster."""

import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from luthien.servers import control_plane_tokens

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yaml"
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"
KUSTOMIZATIONS = sorted(path.parent for path in KUBERNETES_DIR.rglob("kustomization.yaml"))

# Compose services that need no healthcheck, and why.
COMPOSE_UNCHECKED = {
    "agent": "the example client: a one-shot program",
    "otel-collector": "a distroless image with no shell or HTTP client to probe itself",
}
# Containers allowed to run as root, and why.
ROOT_CONTAINERS = {"iptables-init": "iptables needs root with NET_ADMIN (transparent example)"}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|_KEY$|AUTH", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^/@\s]*:([^/@\s]+)@")
COMPOSE_VARIABLE = r"\$\{\w+(:?[-?][^}]*)?\}"
# LUTHIEN_CONTROL_PLANE_TOKENS: NAME:ROLE:TOKEN entries, each token a ${VAR}.
COMPOSE_TOKEN_LIST = re.compile(rf"\w+:\w+:{COMPOSE_VARIABLE}(,\w+:\w+:{COMPOSE_VARIABLE})*")


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def render(kustomization_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """The documents a kustomization's ``resources`` produce, files and nested kustomizations,
    labelled by file. Only ``resources`` is supported, so the kustomizations must stay free of
    patches and generators (checked in test_kustomizations_are_plain)."""
    kustomization = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text())
    documents: list[tuple[str, dict[str, Any]]] = []
    for entry in kustomization.get("resources", []):
        path = (kustomization_dir / entry).resolve()
        if path.is_dir():
            documents.extend(render(path))
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((str(path.relative_to(ROOT)), document))
    return documents


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [document for directory in KUSTOMIZATIONS for document in render(directory)]


def pod_spec(document: dict[str, Any]) -> dict[str, Any] | None:
    kind = document.get("kind")
    if kind == "Pod":
        return document["spec"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return document["spec"]["template"]["spec"]
    if kind == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any], bool]]:
    """(where, container name, container, pod spec, is an init container) for every container."""
    for where, document in all_documents():
        spec = pod_spec(document)
        if spec is None:
            continue
        label = f"{where}:{document['kind']}/{document['metadata']['name']}"
        for init, key in ((False, "containers"), (True, "initContainers")):
            for container in spec.get(key, []):
                yield label, container["name"], container, spec, init


CONTAINER_IDS = [f"{where}:{name}" for where, name, *_ in containers()]


def test_the_layout_is_there() -> None:
    found = {str(path.relative_to(KUBERNETES_DIR)) for path in KUSTOMIZATIONS}
    assert found == {"base", "examples/sidecar", "examples/transparent", "examples/test-cluster"}
    kinds = {(where.split("/")[2], document["kind"]) for where, document in all_documents()}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert ("base", kind) in kinds


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(KUBERNETES_DIR)))
def test_kustomizations_are_plain(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "labels", "namespace"}, (
        "render() only follows `resources`: keep patches and generators out"
    )
    assert kustomization["resources"], directory


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(KUBERNETES_DIR)))
def test_manifests_match_the_kubernetes_schemas(directory: Path) -> None:
    documents = render(directory)
    assert documents
    for where, document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} {document.get('kind')}/{document['metadata'].get('name')}: {exc}")


def test_a_broken_manifest_is_caught() -> None:
    """The schema check is not vacuous: a typo'd field and a wrong type fail it."""
    _, document = next(d for d in render(KUBERNETES_DIR / "base") if d[1]["kind"] == "Deployment")
    typo = json.loads(json.dumps(document))
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong = json.loads(json.dumps(document))
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


def test_every_workload_pod_has_a_restricted_security_context() -> None:
    for where, document in all_documents():
        spec = pod_spec(document)
        if spec is not None:
            assert spec.get("securityContext", {}).get("runAsNonRoot") is True, where


@pytest.mark.parametrize("container", list(containers()), ids=CONTAINER_IDS)
def test_container_policy(container: tuple[str, str, dict[str, Any], dict[str, Any], bool]) -> None:
    where, name, spec, pod, init = container
    image = spec["image"]
    assert "@sha256:" in image or re.fullmatch(r"[^:@]+(:\d+)?/?[^:@]*:[\w][\w.-]*", image), (
        f"{where}:{name}: image {image!r} is not pinned to a tag or digest"
    )
    assert not image.endswith(":latest"), f"{where}:{name}: {image}"
    resources_ = spec.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in resources_.get(part, {}), f"{where}:{name}: resources.{part}.{resource}"
    if not init:  # Kubernetes forbids probes on (non-sidecar) init containers
        assert "livenessProbe" in spec, f"{where}:{name}: livenessProbe"
        assert "readinessProbe" in spec, f"{where}:{name}: readinessProbe"
    security = spec.get("securityContext", {})
    assert security.get("allowPrivilegeEscalation") is False, f"{where}:{name}"
    assert "ALL" in security.get("capabilities", {}).get("drop", []), f"{where}:{name}"
    if name in ROOT_CONTAINERS:
        assert init, f"{where}:{name}: only an init container may run as root"
        assert set(security["capabilities"].get("add", [])) <= {"NET_ADMIN", "NET_RAW"}
        return
    assert security.get("runAsNonRoot", pod.get("securityContext", {}).get("runAsNonRoot")) is True, (
        f"{where}:{name}: runAsNonRoot"
    )
    assert security.get("runAsUser", pod.get("securityContext", {}).get("runAsUser", 1)) != 0
    assert not security.get("capabilities", {}).get("add"), f"{where}:{name}: adds capabilities"
    assert not security.get("privileged"), f"{where}:{name}: privileged"


def test_no_literal_secrets_in_kubernetes_env() -> None:
    for where, name, spec, _, _ in containers():
        for variable in spec.get("env", []):
            if SECRET_NAME.search(variable["name"]) or URL_PASSWORD.search(str(variable.get("value", ""))):
                assert "value" not in variable, f"{where}:{name}: {variable['name']} must come from a Secret"
    for where, document in all_documents():
        assert document["kind"] != "Secret", f"{where}: Secrets are created outside git"


def test_sidecar_points_the_agent_at_the_proxy() -> None:
    (_, deployment), *_ = render(KUBERNETES_DIR / "examples" / "sidecar")
    pod = deployment["spec"]["template"]["spec"]
    agent, proxy = pod["containers"]
    env = {variable["name"]: variable.get("value") for variable in agent["env"]}
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:8080"
    assert ".svc" in env["NO_PROXY"]
    assert env["SSL_CERT_FILE"].startswith("/etc/luthien-ca/")
    assert env["NODE_EXTRA_CA_CERTS"] == "/etc/luthien-ca/luthien-ca.pem"
    assert proxy["args"][0] == "proxy" and "--control-plane" in proxy["args"]
    public = next(volume for volume in pod["volumes"] if volume["name"] == "ca-public")
    assert {item["key"] for item in public["secret"]["items"]} == {"luthien-ca.pem", "ca-bundle.pem"}


def test_compose_matches_the_compose_specification() -> None:
    schema = compose_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(load_compose())
    ]
    assert not errors, "\n".join(errors)
    broken = load_compose()
    broken["services"]["proxy"]["healthcheck"]["intervall"] = "5s"
    assert not validator.is_valid(broken), "the compose schema check is vacuous"


def test_compose_policy() -> None:
    compose = load_compose()
    services = compose["services"]
    assert {
        "proxy",
        "controlplane",
        "dashboard",
        "postgres",
        "redis",
        "otel-collector",
        "jaeger",
        "agent",
    } <= set(services)
    for name, service in services.items():
        image = service["image"]
        tag = image.split("@")[0].rsplit("/", 1)[-1]
        assert "@sha256:" in image or (":" in tag and not tag.endswith(":latest")), f"{name}: {image}"
        if name not in COMPOSE_UNCHECKED:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert not service["healthcheck"].get("disable"), name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_started" if dependency in COMPOSE_UNCHECKED else "service_healthy"
            assert condition["condition"] == expected, f"{name} -> {dependency}"
    assert services["proxy"]["command"] == [
        "proxy",
        "--host",
        "0.0.0.0",
        "--control-plane",
        "http://controlplane:8081",
    ]
    assert services["dashboard"]["depends_on"]["controlplane"]["condition"] == "service_healthy"


def test_compose_has_no_literal_secrets() -> None:
    for name, service in load_compose()["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form"
        for variable, value in environment.items():
            value = str(value)
            if variable == "LUTHIEN_CONTROL_PLANE_TOKENS":
                assert COMPOSE_TOKEN_LIST.fullmatch(value), f"{name}: {variable} holds a literal token"
            elif SECRET_NAME.search(variable):
                assert re.fullmatch(COMPOSE_VARIABLE, value), f"{name}: {variable} is not a ${{VAR}}"
            for password in URL_PASSWORD.findall(value):
                assert re.fullmatch(r"\$\{\w+\}", password), f"{name}: {variable} holds a literal password"


def interpolated(environment: dict[str, Any]) -> dict[str, str]:
    """A service's environment with each ``${VAR...}`` replaced by ``<VAR>``, as Compose would
    substitute distinct secrets."""
    return {key: re.sub(r"\$\{(\w+)[^}]*\}", r"<\1>", str(value)) for key, value in environment.items()}


def test_the_compose_proxy_holds_a_proxy_role_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The role the control plane, reading its environment as `luthien controlplane` does, gives
    the token the proxy presents: proxy, not admin."""
    services = load_compose()["services"]
    presented = interpolated(services["proxy"]["environment"])["LUTHIEN_CONTROL_PLANE_TOKEN"]
    for variable in ("LUTHIEN_CONTROL_PLANE_TOKEN", "LUTHIEN_CONTROL_PLANE_TOKENS"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in interpolated(services["controlplane"]["environment"]).items():
        monkeypatch.setenv(variable, value)
    credential = control_plane_tokens().who(presented)
    assert credential is not None, f"the control plane does not accept the proxy's {presented}"
    assert credential.role == "proxy", credential


def secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        variable["name"]: (ref["name"], ref["key"])
        for variable in container.get("env", [])
        if (ref := variable.get("valueFrom", {}).get("secretKeyRef"))
    }


def test_kubernetes_sidecars_hold_only_a_proxy_role_token() -> None:
    """The sidecar proxies' token Secret is not the control plane's (which holds the admin token
    and the database URL), and base/kustomization.yaml creates it with the same token as the
    control plane's `proxy` entry."""
    (control_plane,) = [c for where, name, c, _, _ in containers() if name == "controlplane"]
    admin = secret_refs(control_plane)["LUTHIEN_CONTROL_PLANE_TOKEN"]
    assert secret_refs(control_plane)["LUTHIEN_CONTROL_PLANE_TOKENS"] == ("luthien-controlplane", "tokens")
    sidecars = [(where, c) for where, name, c, _, _ in containers() if name == "luthien-proxy"]
    assert len(sidecars) == 2, sidecars
    for where, sidecar in sidecars:
        refs = secret_refs(sidecar)
        assert refs == {"LUTHIEN_CONTROL_PLANE_TOKEN": ("luthien-proxy", "token")}, where
        assert admin[0] != "luthien-proxy", where
    steps = (KUBERNETES_DIR / "base" / "kustomization.yaml").read_text()
    in_list = re.search(r'--from-literal=tokens="sidecars:proxy:\$(\w+)"', steps)
    in_secret = re.search(r'luthien-proxy --from-literal=token="\$(\w+)"', steps)
    assert in_list and in_secret and in_list.group(1) == in_secret.group(1), steps


def test_env_example_names_every_variable_and_holds_no_secret() -> None:
    text = (ROOT / ".env.example").read_text()
    assigned = dict(re.findall(r"^#?\s*(\w+)=(.*)$", text, re.MULTILINE))
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    assert used <= set(assigned), used - set(assigned)
    for variable, value in assigned.items():
        if SECRET_NAME.search(variable):
            assert value == "", f".env.example: {variable} must be empty"


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert bases and re.fullmatch(r"python:3\.13\.\d+-slim-\w+", bases[0]), bases
    setup = (ROOT / "scripts" / "setup").read_text()
    uv_version = re.search(r"^UV_VERSION=(\S+)$", setup, re.MULTILINE)
    assert uv_version and f"ARG UV_VERSION={uv_version.group(1)}" in text, "uv differs from scripts/setup"
    assert "uv sync --frozen --no-dev --no-editable" in text
    assert re.search(r"^USER 10001|^USER \$\{LUTHIEN_UID\}", text, re.MULTILINE)
    assert "ARG LUTHIEN_UID=10001" in text
    assert 'ENTRYPOINT ["luthien"]' in text
    assert "HEALTHCHECK" in text
    packages = re.search(r"packages = \[(.*)\]", (ROOT / "pyproject.toml").read_text())
    assert packages
    for package in re.findall(r'"(\w+)"', packages.group(1)):
        assert f"COPY {package} ./{package}" in text, f"the image lacks the {package} package"
