"""The container and Kubernetes files: linted, schema-checked, and in agreement with the
service they run (its settings, its routes, its shutdown timing). Offline and fast; the real
build-and-run is deploy/smoke.sh."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.routes import health
from tests.helpers import REPO, Server, free_port


def _load_requirements_helper() -> ModuleType:
    """deploy/docker/requirements.py, the Dockerfile's dependency helper (not a package)."""
    spec = importlib.util.spec_from_file_location(
        "requirements", REPO / "deploy" / "docker" / "requirements.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requirements = _load_requirements_helper()

BIN = Path(sys.executable).parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
K8S = REPO / "deploy" / "kubernetes"
AUTOSCALING = K8S / "autoscaling"
KSERVE = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
SCHEMAS = Path(__file__).parents[1] / "schemas"
PREFIX = "MNIST_SERVE_"
# Kubernetes' own kinds, checked by kubernetes-validate: deploy/kubernetes/ (what `kubectl
# apply -f deploy/kubernetes/` creates) and the HPA that replaces its CPU one.
CORE_MANIFESTS = [*sorted(K8S.glob("*.yaml")), AUTOSCALING / "hpa-queue.yaml"]
# Custom resources, against the schemas under tests/schemas/ (tests/schemas/generate.py).
CUSTOM_RESOURCES = {
    "keda-scaledobject": (AUTOSCALING / "keda-scaledobject.yaml", "keda-scaledobject.json"),
    "podmonitor": (AUTOSCALING / "podmonitor.yaml", "prometheus-operator-podmonitor.json"),
    "kserve": (KSERVE, "kserve-inferenceservice.json"),
}


# --- reading the files -------------------------------------------------------------------


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the runtime (last) stage."""
    instructions = [tuple(ln.split(None, 1)) for ln in dockerfile_lines()]
    last_from = max(i for i, ins in enumerate(instructions) if ins[0].upper() == "FROM")
    return [(ins[0].upper(), ins[1]) for ins in instructions[last_from:]]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in dockerfile():
        if name == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))  # type: ignore[misc]
    return env


def dockerfile_healthcheck() -> list[str]:
    (args,) = [a for n, a in dockerfile() if n == "HEALTHCHECK"]
    command: list[str] = json.loads(args.split(" CMD ", 1)[1])
    return command


class Reset:
    """Compose's ``!reset`` tag: the merged value is removed (Compose v2.24+)."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def load_compose(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(path.read_text(), Loader=ComposeLoader)
    return data


def merge(base: Any, override: Any) -> Any:
    """Compose's merge, as far as these files need it: mappings merge key by key, ``!reset``
    removes, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    return override


def interpolate_defaults(value: object) -> object:
    """``${VAR:-default}`` -> default (what Compose uses when the variable is unset)."""
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)
    return value


def api_service(compose: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"]["api"]
    return service


def compose_env(service: dict[str, Any]) -> dict[str, str | None]:
    env = service["environment"]
    return {k: None if v is None else str(interpolate_defaults(v)) for k, v in env.items()}


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_documents() if d["kind"] == kind]
    return doc


def k8s_container() -> dict[str, Any]:
    (container,) = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def k8s_env() -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in k8s_container()["env"]}


def load_one(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc  # type: ignore[no-any-return]


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def isvc_predictor() -> dict[str, Any]:
    predictor: dict[str, Any] = load_one(KSERVE)["spec"]["predictor"]
    return predictor


def isvc_container() -> dict[str, Any]:
    (container,) = isvc_predictor()["containers"]
    return container  # type: ignore[no-any-return]


def seconds(duration: str) -> float:
    """Compose durations: 30s, 1m30s, 500ms."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


# --- linters and schemas -----------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    result = run_tool(BIN / "hadolint", "--no-color", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_stays_within_docker_20_10() -> None:
    assert not re.search(r"^#\s*syntax=", DOCKERFILE.read_text(), re.M)
    for line in dockerfile_lines():
        assert "<<" not in line  # heredocs
        assert not re.search(r"--link|--chmod|--mount|--start-interval", line), line


def test_compose_file_matches_the_compose_spec() -> None:
    result = run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_variant_merged_matches_the_spec_and_drops_the_gpu(tmp_path: Path) -> None:
    base, cpu = load_compose(COMPOSE), load_compose(COMPOSE_CPU)
    reservations = api_service(base)["deploy"]["resources"]["reservations"]
    assert reservations["devices"][0]["driver"] == "nvidia"
    assert reservations["devices"][0]["capabilities"] == ["gpu"]
    cpu_devices = api_service(cpu)["deploy"]["resources"]["reservations"]["devices"]
    assert isinstance(cpu_devices, Reset), "use `devices: !reset []`: lists are merged"

    merged = merge(base, cpu)
    assert "devices" not in api_service(merged)["deploy"]["resources"]["reservations"]
    assert api_service(merged)["build"]["args"]["TORCH"] == "cpu"
    out = tmp_path / "merged.json"
    out.write_text(json.dumps(merged))
    result = run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", out)
    assert result.returncode == 0, result.stdout + result.stderr


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return run_tool("docker", "compose", "version").returncode == 0


@pytest.mark.skipif(not _docker_compose_available(), reason="no `docker compose` plugin")
def test_docker_compose_itself_drops_the_gpu_in_the_cpu_variant() -> None:
    def config(*files: Path) -> dict[str, Any]:
        args = [a for f in files for a in ("-f", str(f))]
        result = run_tool("docker", "compose", *args, "config", "--format", "json")
        assert result.returncode == 0, result.stderr
        return api_service(json.loads(result.stdout))

    gpu = config(COMPOSE)["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["driver"] == "nvidia"
    cpu = config(COMPOSE, COMPOSE_CPU)
    assert not cpu["deploy"]["resources"].get("reservations", {}).get("devices")


@pytest.mark.parametrize("path", CORE_MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("name", CUSTOM_RESOURCES)
def test_custom_resource_matches_its_schema(name: str) -> None:
    manifest, schema = CUSTOM_RESOURCES[name]
    result = run_tool(BIN / "check-jsonschema", "--schemafile", SCHEMAS / schema, manifest)
    assert result.returncode == 0, result.stdout + result.stderr


# A field each kind does not have, where a user could plausibly write it. KServe's
# protocolVersion belongs to predictor.model (with a ServingRuntime), not to a custom
# container, which declares its protocol with the PROTOCOL variable instead.
MISPLACED_FIELDS = {
    "keda-scaledobject": (("spec",), "minReplicas", 1),
    "podmonitor": (("spec", "podMetricsEndpoints", 0), "scrapeInterval", "15s"),
    "kserve": (("spec", "predictor"), "protocolVersion", "v2"),
}


@pytest.mark.parametrize("name", CUSTOM_RESOURCES)
def test_custom_resource_schema_rejects_a_misplaced_field(name: str, tmp_path: Path) -> None:
    manifest, schema = CUSTOM_RESOURCES[name]
    doc = load_one(manifest)
    keys, field, value = MISPLACED_FIELDS[name]
    node: Any = doc
    for key in keys:
        node = node[key]
    node[field] = value
    bad = tmp_path / manifest.name
    bad.write_text(yaml.safe_dump(doc))
    result = run_tool(BIN / "check-jsonschema", "--schemafile", SCHEMAS / schema, bad)
    assert result.returncode == 1, result.stdout + result.stderr
    assert field in result.stdout


def test_schemas_say_where_they_come_from() -> None:
    for _, schema in CUSTOM_RESOURCES.values():
        comment = json.loads((SCHEMAS / schema).read_text())["$comment"]
        assert "PyPI" in comment
        assert "tests/schemas/generate.py" in comment


def test_kserve_predictor_pod_fields_are_a_valid_pod_spec() -> None:
    """KServe's schema leaves the Kubernetes types in the predictor to Kubernetes' own."""
    version = kubernetes_validate.latest_version()
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    pod_spec = json.loads((schemas / f"v{version}-local-strict" / "podspec-v1.json").read_text())
    pod_fields = set(pod_spec["properties"])
    predictor = isvc_predictor()
    spec = {k: v for k, v in predictor.items() if k in pod_fields}
    assert {"containers", "securityContext", "volumes"} <= spec.keys()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}
    kubernetes_validate.validate(pod, version, strict=True)


def probe_endpoints() -> dict[str, object]:
    """Path -> endpoint function of the health routes, for the paths the app really serves."""
    served = create_app(Settings()).openapi()["paths"]
    return {
        r.path: r.endpoint
        for r in health.router.routes
        if isinstance(r, APIRoute) and "GET" in r.methods and "get" in served.get(r.path, {})
    }


def probe_url_path(command: list[str]) -> str:
    match = re.search(r"http://127\.0\.0\.1:%s(/[^']*)'", command[-1])
    assert match, command
    return match.group(1)


def test_probes_hit_the_service_liveness_and_readiness_routes() -> None:
    routes = probe_endpoints()

    def endpoint(path: str) -> object:
        assert path in routes, f"{path} is not a health route the app serves"
        return routes[path]

    container = k8s_container()
    assert endpoint(container["livenessProbe"]["httpGet"]["path"]) is health.live
    assert endpoint(container["readinessProbe"]["httpGet"]["path"]) is health.ready
    assert endpoint(container["startupProbe"]["httpGet"]["path"]) is health.ready
    assert endpoint(probe_url_path(dockerfile_healthcheck())) is health.ready
    compose_test = api_service(load_compose(COMPOSE))["healthcheck"]["test"]
    assert compose_test[0] == "CMD"
    assert compose_test[1:] == dockerfile_healthcheck(), "one healthcheck command for both"


def test_ports_agree() -> None:
    (expose,) = [int(a) for n, a in dockerfile() if n == "EXPOSE"]
    env = dockerfile_env()
    assert int(env[f"{PREFIX}PORT"]) == expose
    assert env[f"{PREFIX}HOST"] == "0.0.0.0"  # reachable from outside the container

    service = api_service(load_compose(COMPOSE))
    assert int(compose_env(service)[f"{PREFIX}PORT"] or 0) == expose
    (mapping,) = service["ports"]
    target = str(interpolate_defaults(mapping)).split(":")[-1]
    assert int(target) == expose

    container = k8s_container()
    (port,) = container["ports"]
    assert port["containerPort"] == expose
    assert f"{PREFIX}PORT" not in k8s_env()  # the image's port, as declared
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    (service_port,) = k8s("Service")["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    selector = k8s("Service")["spec"]["selector"]
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def all_env_names() -> dict[str, set[str]]:
    base, cpu = load_compose(COMPOSE), load_compose(COMPOSE_CPU)
    return {
        "Dockerfile": {k for k in dockerfile_env() if k.startswith(PREFIX)},
        "docker-compose.yml": set(compose_env(api_service(base))),
        "docker-compose.cpu.yml": set(compose_env(api_service(cpu))),
        "kubernetes": set(k8s_env()),
    }


def test_every_environment_variable_is_a_setting() -> None:
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    for where, names in all_env_names().items():
        assert names, where
        assert names <= fields, f"{where}: {sorted(names - fields)} are not settings"


@pytest.mark.parametrize("where", ["Dockerfile", "compose", "compose-cpu", "kubernetes"])
def test_environment_values_are_valid_settings(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if where == "Dockerfile":
        env: dict[str, str | None] = {
            k: v for k, v in dockerfile_env().items() if k.startswith(PREFIX)
        }
    elif where == "kubernetes":
        # resourceFieldRef values are whole CPU counts (divisor 1): "2" stands for them.
        env = {k: "2" if v is None else v for k, v in k8s_env().items()}
    else:
        env = compose_env(api_service(load_compose(COMPOSE)))
        if where == "compose-cpu":
            env |= compose_env(api_service(load_compose(COMPOSE_CPU)))
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None:  # None: passed through when set
            monkeypatch.setenv(key, value)
    settings = Settings()
    for key, value in env.items():
        if value:
            field = key.removeprefix(PREFIX).lower()
            assert getattr(settings, field) is not None


def drain_seconds(env: dict[str, str | None]) -> float:
    defaults = Settings.model_fields
    delay = env.get(f"{PREFIX}DRAIN_DELAY_S") or defaults["drain_delay_s"].default
    timeout = env.get(f"{PREFIX}DRAIN_TIMEOUT_S") or defaults["drain_timeout_s"].default
    return float(delay) + float(timeout)


def test_grace_periods_outlast_the_drain() -> None:
    service = api_service(load_compose(COMPOSE))
    assert seconds(service["stop_grace_period"]) > drain_seconds(compose_env(service))
    grace = k8s("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain_seconds(k8s_env())
    assert float(k8s_env()[f"{PREFIX}DRAIN_DELAY_S"] or 0) > 0, "endpoints need time to update"


def test_models_dir_agrees_with_the_image_and_the_mount() -> None:
    models_dir = dockerfile_env()[f"{PREFIX}MODELS_DIR"]
    copies = [shlex.split(a) for n, a in dockerfile() if n == "COPY"]
    assert [c[-1] for c in copies if c[-2].endswith("/models")] == [models_dir]
    service = api_service(load_compose(COMPOSE))
    assert compose_env(service)[f"{PREFIX}MODELS_DIR"] == models_dir
    targets = [str(interpolate_defaults(v)).split(":")[1] for v in service["volumes"]]
    assert models_dir in targets


def test_non_root_and_read_only_everywhere() -> None:
    (user,) = [a for n, a in dockerfile() if n == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    assert uid != 0
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        uid,
        gid,
    )
    container = k8s_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Uploads spool to temporary files: /tmp must stay writable.
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]
    service = api_service(load_compose(COMPOSE))
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]


def test_kubernetes_asks_for_one_gpu_and_scales_the_deployment() -> None:
    assert k8s_container()["resources"]["limits"]["nvidia.com/gpu"] == 1
    target = k8s("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    deployment = k8s("Deployment")
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = k8s("HorizontalPodAutoscaler")["spec"]
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_pods_spread_and_are_evicted_one_at_a_time() -> None:
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels().items()
    pdb = k8s("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels().items()
    # At least one pod may always go: a budget of zero would block every node drain.
    assert pdb["maxUnavailable"] >= 1
    assert "minAvailable" not in pdb


# --- autoscaling on queue depth ----------------------------------------------------------


def adapter_rule() -> dict[str, Any]:
    values = yaml.safe_load((AUTOSCALING / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["external"]
    return rule  # type: ignore[no-any-return]


def keda_trigger() -> dict[str, Any]:
    (trigger,) = load_one(AUTOSCALING / "keda-scaledobject.yaml")["spec"]["triggers"]
    return trigger  # type: ignore[no-any-return]


def selectors(query: str) -> list[promql_parser.VectorSelector]:
    """Every series selector in a PromQL query (parsing it: a syntax error raises)."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(query), pre_visit=visit)
    return found


def exported_metric_names(client: TestClient) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200
    return {family.name for family in text_string_to_metric_families(response.text)}


def test_hpa_and_keda_scale_on_the_same_query_of_an_exported_metric(client: TestClient) -> None:
    query = adapter_rule()["metricsQuery"]
    assert keda_trigger()["metadata"]["query"] == query
    assert query in (REPO / "docs" / "deploy.md").read_text(), "the documented query"
    (selector,) = selectors(query)
    (series,) = selectors(adapter_rule()["seriesQuery"])
    assert selector.name == series.name == "mnist_serve_queue_images"
    assert selector.name in exported_metric_names(client)


def test_the_queue_query_selects_exactly_this_deployments_pods() -> None:
    (selector,) = selectors(adapter_rule()["metricsQuery"])
    matchers = {m.name: m for m in selector.matchers.matchers}
    assert set(matchers) == {"namespace", "pod"}
    assert matchers["namespace"].op == promql_parser.MatchOp.Equal
    assert matchers["pod"].op == promql_parser.MatchOp.Re
    name = k8s("Deployment")["metadata"]["name"]
    pod = re.compile(matchers["pod"].value)  # PromQL anchors its regexes: fullmatch
    assert pod.fullmatch(f"{name}-7d4b9c6f5-x2x9z")  # <deployment>-<template hash>-<suffix>
    assert pod.fullmatch(f"{name}-5f8d9b7c4d-ab3cd")
    assert not pod.fullmatch(f"{name}-canary-7d4b9c6f5-x2x9z")
    assert not pod.fullmatch(f"other-{name}-7d4b9c6f5-x2x9z")


def test_queue_hpa_and_keda_agree_on_target_bounds_and_prometheus() -> None:
    hpa = load_one(AUTOSCALING / "hpa-queue.yaml")["spec"]
    keda = load_one(AUTOSCALING / "keda-scaledobject.yaml")["spec"]
    deployment = k8s("Deployment")["metadata"]["name"]
    assert hpa["scaleTargetRef"]["name"] == keda["scaleTargetRef"]["name"] == deployment
    # The HPA applied over hpa.yaml's must replace it, not sit beside it.
    queue_hpa = load_one(AUTOSCALING / "hpa-queue.yaml")["metadata"]["name"]
    assert queue_hpa == k8s("HorizontalPodAutoscaler")["metadata"]["name"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == adapter_rule()["name"]["as"]
    target = metric["external"]["target"]
    trigger = keda_trigger()
    # Both divide the query's total by the replica count and compare it with one number.
    assert target["type"] == trigger["metricType"] == "AverageValue"
    assert float(target["averageValue"]) == float(trigger["metadata"]["threshold"]) > 0
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
        keda["minReplicaCount"],
        keda["maxReplicaCount"],
    )
    assert keda["minReplicaCount"] >= 1  # no scale to zero: nothing would measure the queue
    values = yaml.safe_load((AUTOSCALING / "prometheus-adapter-values.yaml").read_text())
    prometheus = values["prometheus"]
    assert trigger["metadata"]["serverAddress"] == f"{prometheus['url']}:{prometheus['port']}"


def test_prometheus_scrapes_the_port_the_app_serves_metrics_on() -> None:
    container = k8s_container()
    (port,) = container["ports"]
    annotations = k8s("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    monitor = load_one(AUTOSCALING / "podmonitor.yaml")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels().items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] == port["name"]
    paths = {annotations["prometheus.io/path"], endpoint["path"]}
    assert paths == {"/metrics"}
    assert "/metrics" in {getattr(r, "path", None) for r in create_app(Settings()).routes}


# --- KServe --------------------------------------------------------------------------------


def test_kserve_runs_the_same_image_and_pod_speaking_v2() -> None:
    container = isvc_container()
    deployment = k8s_container()
    assert container["name"] == "kserve-container"
    assert container["image"] == deployment["image"]
    env = {e["name"]: e for e in container["env"]}
    assert env.pop("PROTOCOL")["value"] == "v2"
    assert env == {e["name"]: e for e in deployment["env"]}
    for key in ("resources", "securityContext", "volumeMounts"):
        assert container[key] == deployment[key], key
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    predictor = isvc_predictor()
    for key in ("securityContext", "tolerations", "volumes", "terminationGracePeriodSeconds"):
        assert predictor[key] == pod[key], key
    assert predictor["minReplicas"] >= 1


def test_kserve_port_and_probes_are_the_images_and_v2s() -> None:
    (expose,) = [int(a) for n, a in dockerfile() if n == "EXPOSE"]
    container = isvc_container()
    (port,) = container["ports"]
    assert port["containerPort"] == expose
    routes = probe_endpoints()
    expected = {"startupProbe": health.ready, "livenessProbe": health.live}
    expected["readinessProbe"] = health.ready
    for probe, endpoint in expected.items():
        action = container[probe]["httpGet"]
        assert action["path"].startswith("/v2/health/"), probe
        assert routes[action["path"]] is endpoint, probe
        assert action["port"] == port["containerPort"], probe


# --- what goes into the image ------------------------------------------------------------


def test_image_installs_only_the_runtime_dependencies() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch, rest = requirements.split(REPO / "pyproject.toml")
    assert sorted(torch + rest) == sorted(project["dependencies"])
    assert {requirements.requirement_name(r) for r in torch} == {"torch", "torchvision"}
    extras = {r for reqs in project["optional-dependencies"].values() for r in reqs}
    assert not extras & set(torch + rest)


def test_requirements_helper_prints_pins_or_the_versions_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    torch, _ = requirements.split(REPO / "pyproject.toml")
    assert requirements.main(["torch", "", ""]) == 0
    assert capsys.readouterr().out.split() == torch
    assert requirements.main(["torch", "2.13.0+cpu", "0.28.0"]) == 0
    assert capsys.readouterr().out.split() == ["torch==2.13.0+cpu", "torchvision==0.28.0"]
    assert requirements.main(["torch", "2.13.0", ""]) == 2
    assert requirements.main(["bogus"]) == 2


@pytest.mark.slow  # a fresh interpreter importing torch
def test_serving_imports_nothing_from_the_train_extras() -> None:
    """The image has no tqdm or matplotlib: the service must start without them."""
    code = (
        "import sys\n"
        "for m in ('tqdm', 'matplotlib'): sys.modules[m] = None\n"
        "import app.__main__\n"
        "from app.main import create_app\n"
        "from app.config import Settings\n"
        "create_app(Settings())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*", "start from nothing, then list what the image needs"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = set()
    for line in dockerfile_lines():
        words = shlex.split(line) if line.startswith("COPY") else []
        if words and not any(w.startswith("--from") for w in words):
            sources.update(w.rstrip("/") for w in words[1:-1])
    assert sources == allowed
    assert not {"tests", ".venv", "data", ".git"} & allowed


# --- the healthcheck command, run for real -----------------------------------------------


def healthcheck(port: int) -> int:
    command = dockerfile_healthcheck()
    assert command[0] == "python"
    env = {"MNIST_SERVE_PORT": str(port), "PATH": ""}
    return subprocess.run([sys.executable, *command[1:]], env=env, timeout=30).returncode


@pytest.fixture
def status_server() -> Iterator[tuple[int, list[int]]]:
    """A loopback HTTP server answering every GET with the status in ``codes[0]``."""
    codes = [503]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(codes[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], codes
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_healthcheck_fails_on_503_and_on_no_server(status_server: tuple[int, list[int]]) -> None:
    port, codes = status_server
    assert healthcheck(port) != 0
    codes[0] = 200
    assert healthcheck(port) == 0
    assert healthcheck(free_port()) != 0


@pytest.mark.slow
def test_healthcheck_passes_on_the_real_service(server: Server) -> None:
    assert healthcheck(int(server.url.rsplit(":", 1)[1])) == 0


def test_probe_paths_answer_on_the_service(client: TestClient) -> None:
    for container in (k8s_container(), isvc_container()):
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            response = client.get(container[probe]["httpGet"]["path"])
            assert response.status_code == 200, (container["name"], probe, response.text)
