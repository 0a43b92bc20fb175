"""deploy/k8s: every kustomization renders, validates against the Kubernetes schemas offline,
and its objects agree with each other and with the image and the server's settings."""

from __future__ import annotations

import argparse

import kubernetes_validate
import pytest
import yaml

from del_server import settings as settings_module

# The oldest Kubernetes the manifests support (native gRPC probes are GA since 1.27) and the
# newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
# The Prometheus Operator's CRDs have no schema here; test_operator_objects_* check them.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
EXPECTED_KINDS = {"Namespace", "ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler",
                  "PodDisruptionBudget", "NetworkPolicy", *OPERATOR_KINDS}  # fmt: skip


def only(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objects: list[dict]) -> dict:
    return only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def server_config(objects: list[dict]) -> dict[str, str]:
    name = container(objects)["envFrom"][0]["configMapRef"]["name"]
    return only(objects, "ConfigMap", name)["data"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_every_kustomization_renders_the_whole_deployment(rendered, kustomization):
    objects = rendered[kustomization]
    assert {o["kind"] for o in objects} == EXPECTED_KINDS
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] != "Namespace"} == {"del"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_validate_against_the_kubernetes_schemas(rendered, kustomization, version):
    for obj in rendered[kustomization]:
        if obj["kind"] in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # strict: no unknown fields


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_example_manifests_validate_against_the_kubernetes_schemas(deploy_dir, version):
    for path in sorted((deploy_dir / "k8s" / "examples").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(obj, version, strict=True)


def test_services_policies_and_autoscaler_select_the_server_pods(rendered, kustomization):
    objects = rendered[kustomization]
    deployment = only(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    for service in (o for o in objects if o["kind"] == "Service"):
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports.keys()
    grpc_service = only(objects, "Service", "del-server")
    assert grpc_service["spec"]["clusterIP"] == "None", "headless: clients balance streams"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        spec = only(objects, kind)["spec"]
        selector = spec["selector"] if kind == "PodDisruptionBudget" else spec["podSelector"]
        assert selects(selector["matchLabels"], pod_labels), kind
    policy_ports = {p["port"] for rule in only(objects, "NetworkPolicy")["spec"]["ingress"]
                    for p in rule["ports"]}  # fmt: skip
    assert policy_ports == ports.keys()
    target = only(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


def test_operator_objects_find_the_metrics_service(rendered, kustomization):
    objects = rendered[kustomization]
    monitor = only(objects, "ServiceMonitor")["spec"]
    matched = [o for o in objects if o["kind"] == "Service"
               and selects(monitor["selector"]["matchLabels"], o["metadata"]["labels"])]  # fmt: skip
    assert [s["metadata"]["name"] for s in matched] == ["del-server-metrics"]
    service = matched[0]
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["endpoints"]} <= service_ports
    # The job label the alert rules and the dashboard select.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "del-server"
    rules = only(objects, "PrometheusRule")["spec"]["groups"]
    assert all(rule["alert"] and rule["expr"] for group in rules for rule in group["rules"])


def test_configuration_is_valid_server_settings(rendered, server_image, kustomization):
    config = server_config(rendered[kustomization])
    fields = {"DEL_" + f.upper() for f in settings_module.Settings.__dataclass_fields__}
    assert set(config) <= fields, f"not settings: {set(config) - fields}"
    environ = {**server_image.env, **config}  # Kubernetes' variables override the image's
    settings_module.resolve(argparse.Namespace(), environ=environ)


def test_pods_expose_and_probe_the_ports_the_server_listens_on(
    rendered, server_image, kustomization
):
    objects = rendered[kustomization]
    environ = {**server_image.env, **server_config(objects)}
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert ports == {
        "grpc": int(environ["DEL_PORT"]),
        "metrics": int(environ["DEL_METRICS_PORT"]),
        "health": int(environ["DEL_HEALTH_PORT"]),
    }
    assert environ["DEL_HOST"] == "0.0.0.0", "probes and peers reach the pod's own address"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # The plaintext health listener: the kubelet cannot probe a TLS port over gRPC.
        assert container(objects)[probe]["grpc"]["port"] == ports["health"], probe


def test_termination_grace_outlasts_the_servers_drain(rendered, kustomization):
    objects = rendered[kustomization]
    grace_s = float(server_config(objects)["DEL_GRACE_S"])
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= grace_s + 10


def test_pods_run_as_the_images_non_root_user_with_nothing_to_escalate(
    rendered, server_image, kustomization
):
    objects = rendered[kustomization]
    namespace = only(objects, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    uid = int(server_image.user.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    security = container(objects)["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    mounts = {m["mountPath"]: m for m in container(objects)["volumeMounts"]}
    assert mounts["/models"]["readOnly"], "the model volume is read-only"
    # With a read-only root, caches need a writable HOME.
    assert server_image.env["HOME"] in mounts
    assert container(objects)["resources"]["limits"]["memory"]


def test_gpu_overlay_gives_each_replica_one_gpu_and_scales_on_the_queue(rendered):
    objects = rendered["k8s/overlays/gpu"]
    resources = container(objects)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    metrics = only(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["pods"]["metric"]["name"] for m in metrics] == ["del_num_requests_waiting"]
    assert server_config(objects)["DEL_DTYPE"] == "bfloat16"
