"""deploy/kubernetes: the manifests parse, match Kubernetes's schema, and say what matters.

No cluster runs here, so nothing is applied. kubectl renders the kustomization and decodes
every object offline (`kubectl apply --dry-run=client` needs a server's API discovery, even
with --validate=false); kubernetes-validate checks each object strictly against the API schema
of the Kubernetes version below. The rest checks the security and wiring a user relies on.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from caduceus.core.service_names import SERVICES

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.32.0"


@functools.cache
def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((DEPLOY / resource).read_text()) if d]
    return documents


def _find(kind: str, name: str) -> dict[str, Any]:
    for document in _documents():
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} {name}")


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    return kubectl


def test_kubectl_renders_and_decodes_every_object(tmp_path: Path) -> None:
    kubectl = _kubectl()
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "all.yaml").write_text(rendered)
    # --local: decoded by kubectl's own types, without a server.
    names = subprocess.run(
        [kubectl, "label", "--local", "-f", str(tmp_path / "all.yaml"), "checked=yes", "-o=name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for service in SERVICES:
        assert f"deployment.apps/caduceus-{service}" in names
    assert "service/caduceus-dicom" in names and "service/caduceus-web" in names
    # The kustomization points every service at the image the administrator names.
    images = {line.strip() for line in rendered.splitlines() if line.strip().startswith("image:")}
    assert images == {"image: registry.example.org/caduceus:0.1.0"}


def test_every_object_matches_the_kubernetes_schema() -> None:
    validate = pytest.importorskip("kubernetes_validate")
    documents = [*_documents(), yaml.safe_load((DEPLOY / "secret.example.yaml").read_text())]
    for document in documents:
        try:
            validate.validate(document, KUBERNETES_VERSION, strict=True)
        except validate.ValidationError as exc:
            pytest.fail(f"{document['kind']} {document['metadata']['name']}: {exc.message}")


def test_services_run_unprivileged_within_requests() -> None:
    for service in SERVICES:
        pod = _find("Deployment", f"caduceus-{service}")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        assert container["args"] == [service]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert mounts["data"] == _find("ConfigMap", "caduceus-config")["data"]["CADUCEUS_HOME"]
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if v["name"] == "data"
        ]
        assert claims == ["caduceus-data"]
        # Only the processor holds a token for the API.
        assert pod["automountServiceAccountToken"] is (service == "processor")


def test_receiver_and_web_are_reachable_and_probed() -> None:
    for service, port in (("receiver", 11112), ("web", 8000)):
        (container,) = _find("Deployment", f"caduceus-{service}")["spec"]["template"]["spec"][
            "containers"
        ]
        assert [p["containerPort"] for p in container["ports"]] == [port]
        assert "readinessProbe" in container and "livenessProbe" in container
    dicom = _find("Service", "caduceus-dicom")["spec"]
    assert dicom["type"] in ("LoadBalancer", "NodePort")
    assert [p["port"] for p in dicom["ports"]] == [11112]
    assert dicom["selector"]["app.kubernetes.io/component"] == "receiver"
    assert [p["port"] for p in _find("Service", "caduceus-web")["spec"]["ports"]] == [8000]


def test_the_data_root_is_shared_by_every_node() -> None:
    assert _find("PersistentVolumeClaim", "caduceus-data")["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]


def test_the_processor_may_run_jobs_in_its_namespace_and_no_more() -> None:
    from caduceus.processor.runners.kubernetes import COMPONENT, COMPONENT_LABEL, NETWORK_LABEL

    pod = _find("Deployment", "caduceus-processor")["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in pod["containers"][0]["env"]}
    assert env["CADUCEUS_PROCESSOR_RUNNER"] == "kubernetes"
    assert env["CADUCEUS_PROCESSOR_KUBERNETES_DATA_CLAIM"] == "caduceus-data"
    assert pod["serviceAccountName"] == "caduceus-processor"
    binding = _find("RoleBinding", "caduceus-processor")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "caduceus-processor",
    }
    grants = {
        (group, resource): set(rule["verbs"])
        for rule in _find("Role", "caduceus-processor")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert {"create", "get", "list", "delete"} <= grants[("batch", "jobs")]
    assert "get" in grants[("", "pods/log")]
    assert not any("*" in verbs for verbs in grants.values())
    # The runner labels a module without network as the policy selects: no traffic at all.
    policy = _find("NetworkPolicy", "caduceus-modules-without-network")["spec"]
    assert policy["podSelector"]["matchLabels"] == {
        COMPONENT_LABEL: COMPONENT,
        NETWORK_LABEL: "none",
    }
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert not policy.get("ingress") and not policy.get("egress")


def test_every_service_is_probed_for_its_own_heartbeat_or_port() -> None:
    for service in SERVICES:
        (container,) = _find("Deployment", f"caduceus-{service}")["spec"]["template"]["spec"][
            "containers"
        ]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = container[probe]
            if service in ("receiver", "web"):
                assert check["tcpSocket"]["port"] == container["ports"][0]["name"]
            else:
                assert check["exec"]["command"] == ["caduceus", "health", "--service", service]
        # A schema migration at the first start after an upgrade has an hour before liveness
        # could restart the pod that runs it (and roll the migration back).
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
        live = container["livenessProbe"]
        assert live["periodSeconds"] * live.get("failureThreshold", 3) >= 60
