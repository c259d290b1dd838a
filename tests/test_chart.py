"""The Helm chart, on real control planes.

* Without a cluster: the chart's CRDs are a byte-for-byte copy of crds/, `helm lint --strict`
  is clean for every configuration and overlay, every value is documented and typed.
* On the session cluster: every rendered object passes a server-side dry run; an install
  brings the operator and bridge pods to Ready (kwok), an upgrade with a changed value rolls
  the Deployment, an uninstall removes the Deployments and keeps the CRDs; `kubectl auth
  can-i` shows what each ServiceAccount may and may not do.
* On a second control plane started beside it: the real operator, signed in with nothing but
  a token of the chart's ServiceAccount, reconciles examples/modelrunner.yaml to Ready, with
  the cluster-wide and with the per-namespace RBAC; then the Helmsman desired state rolls the
  chart out to both clusters (contexts "gke" and "denbi").
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import get, status, wait_for

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import operator_process, tools
from bioengine_operator.local import procs

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "bioengine-operator"
HELMSMAN_DIR = ROOT / "examples" / "helmsman"
OVERLAYS = {"gke": ROOT / "examples/values/gke.yaml", "denbi": ROOT / "examples/values/denbi.yaml"}
KUBE_VERSION = "1.34.10"
CRD_NAMES = tuple(
    f"customresourcedefinition/{plural}.bioengine.bioimage.io"
    for plural in ("bioengineapps", "modelrunners", "bioenginedatasets")
)
# A bridge that is deployed: under kwok no container runs, so the server is never contacted.
BRIDGE = (
    "--set=bridge.hypha.serverUrl=https://hypha.invalid",
    "--set=bridge.hypha.workspace=bioengine-test",
    "--set=bridge.hypha.token=not-a-real-token",
)
CONFIGURATIONS = {
    "defaults": (),
    "bridge": BRIDGE,
    "bundled-hypha": ("--set=hypha.enabled=true", "--set=bridge.hypha.workspace=ws"),
    "watch-namespaces": (*BRIDGE, "--set=watchNamespaces={team-a,team-b}"),
    "existing-secrets": (
        *BRIDGE,
        "--set=bridge.hypha.existingSecret=my-token",
        "--set=hypha.enabled=true",
        "--set=hypha.existingSecret=my-hypha",
        "--set=operator.serviceAccount.create=false",
        "--set=operator.serviceAccount.name=custom-operator",
    ),
    **{f"overlay-{name}": (f"--values={path}",) for name, path in OVERLAYS.items()},
    "shared-hub": (
        f"--values={OVERLAYS['gke']}",
        f"--values={ROOT / 'examples/values/shared-hub.yaml'}",
    ),
}


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Helm's cache, config and data in a temporary directory, not the user's home."""
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    return result


def helm(
    env: dict[str, str], *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    prefix = [str(tools.binary("helm"))]
    if kubeconfig is not None:
        prefix.append(f"--kubeconfig={kubeconfig}")
    return run([*prefix, *args], env=env, check=check)


def install(
    env: dict[str, str], release: str, namespace: str, kubeconfig: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``helm install`` of the chart from this checkout."""
    return helm(
        env,
        "install",
        release,
        str(CHART),
        f"--namespace={namespace}",
        *extra,
        kubeconfig=kubeconfig,
    )


def uninstall(
    env: dict[str, str], release: str, namespace: str, kubeconfig: Path, *extra: str
) -> None:
    """Best-effort cleanup: the release may already be gone when a test failed early."""
    helm(
        env,
        "uninstall",
        release,
        f"--namespace={namespace}",
        "--wait",
        *extra,
        kubeconfig=kubeconfig,
        check=False,
    )


def template(
    env: dict[str, str], *values: str, namespace: str = "default", crds: bool = False
) -> str:
    args = [
        "template",
        "bioengine",
        str(CHART),
        f"--namespace={namespace}",
        f"--kube-version={KUBE_VERSION}",
    ]
    if crds:
        args.append("--include-crds")
    return helm(env, *args, *values).stdout


def deployment_ready(dev: devcluster.DevCluster, namespace: str, name: str) -> bool:
    deploy = get(dev, namespace, "deployment", name)
    st = deploy.get("status", {})
    return bool(
        deploy
        and st.get("observedGeneration") == deploy["metadata"]["generation"]
        and st.get("updatedReplicas") == 1
        and st.get("readyReplicas") == 1
        and st.get("replicas") == 1
    )


def pods(dev: devcluster.DevCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = dev.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def can_i(dev: devcluster.DevCluster, who: str, *args: str) -> bool:
    out = dev.kubectl("auth", "can-i", f"--as={who}", *args, check=False).stdout.strip()
    assert out in ("yes", "no"), out
    return out == "yes"


def env_of(deploy: dict[str, Any]) -> dict[str, str]:
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# -- the chart as files -------------------------------------------------------------------------


def test_chart_crds_are_a_copy_of_the_generated_crds() -> None:
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    assert sorted(chart) == sorted(source)
    stale = [name for name in source if chart[name] != source[name]]
    assert not stale, (
        f"charts/bioengine-operator/crds/ differs from crds/ for {stale}: "
        "cp crds/*.yaml charts/bioengine-operator/crds/"
    )


def test_chart_version_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert version and chart["appVersion"] == version.group(1)


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
def test_helm_lint_strict(helm_env: dict[str, str], configuration: str) -> None:
    result = helm(helm_env, "lint", "--strict", str(CHART), *CONFIGURATIONS[configuration])
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def values_keys() -> list[tuple[str, bool]]:
    """(dotted path, has a comment right above) of every key in values.yaml."""
    keys: list[tuple[str, bool]] = []
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):(\s|$)", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            keys.append((".".join(k for _, k in stack), previous.lstrip().startswith("#")))
        if line.strip():
            previous = line
    return keys


def schema_node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_value_is_documented_and_typed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = values_keys()
    assert len(keys) > 80
    assert not [k for k, commented in keys if not commented], "keys without a comment above"
    for path, _ in keys:
        node = schema
        for part in path.split("."):
            resolved = schema_node(schema, node)
            if part in resolved.get("properties", {}):
                node = resolved["properties"][part]
            else:  # a key of a typed map, e.g. resources.requests.cpu
                node = resolved.get("additionalProperties")
                assert isinstance(node, dict), f"{path} is not in values.schema.json"
        assert "type" in schema_node(schema, node) or "anyOf" in node, f"{path} has no type"

    # Every object in the schema is closed (or a typed map), and every property of the chart's
    # own objects has a default in values.yaml (Kubernetes objects such as a security context
    # list all their optional fields).
    def walk(node: dict[str, Any], value: Any, where: str) -> None:
        node = schema_node(schema, node)
        if node.get("type") == "object":
            extra = node.get("additionalProperties")
            assert extra is False or isinstance(extra, dict), f"{where} is open"
            native = where.startswith(("values.podSecurityContext", "values.containerSecurity"))
            if isinstance(value, dict) and node.get("properties") and not native:
                missing = set(node["properties"]) - set(value) - {"global"}
                assert not missing or not value, f"{where}: no default for {missing}"
            for name, sub in node.get("properties", {}).items():
                if name != "global":
                    walk(
                        sub, value.get(name) if isinstance(value, dict) else None, f"{where}.{name}"
                    )
        if node.get("type") == "array":
            walk(node["items"], None, f"{where}[]")

    walk(schema, values, "values")
    for definition in schema["definitions"].values():
        walk(definition, None, "definitions")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("--set=operator.replicas=2",), "additional properties 'replicas' not allowed"),
        (("--set=operator.logFormat=xml",), "logFormat"),
        (("--set=image.pullPolicy=Sometimes",), "pullPolicy"),
        (("--set=bridge.hypha.serverUrl=https://h",), "bridge.hypha.workspace is required"),
        (
            ("--set=bridge.hypha.serverUrl=https://h", "--set=bridge.hypha.workspace=w"),
            "the bridge needs a Hypha token",
        ),
    ],
)
def test_bad_values_are_refused(
    helm_env: dict[str, str], values: tuple[str, ...], message: str
) -> None:
    result = helm(
        helm_env,
        "template",
        "x",
        str(CHART),
        f"--kube-version={KUBE_VERSION}",
        *values,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_rendered_rbac_has_no_wildcards_and_pods_are_locked_down(helm_env: dict[str, str]) -> None:
    for configuration, values in CONFIGURATIONS.items():
        for obj in yaml.safe_load_all(template(helm_env, *values)):
            if not obj:
                continue
            if obj["kind"] in ("ClusterRole", "Role"):
                for rule in obj["rules"]:
                    for field in ("apiGroups", "resources", "verbs"):
                        assert "*" not in rule[field], f"{configuration}: {obj['metadata']['name']}"
            if obj["kind"] == "Deployment":
                spec = obj["spec"]
                assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
                pod = spec["template"]["spec"]
                assert pod["securityContext"]["runAsNonRoot"] is True
                assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
                for container in pod["containers"]:
                    sc = container["securityContext"]
                    assert sc["readOnlyRootFilesystem"] is True
                    assert sc["allowPrivilegeEscalation"] is False
                    assert sc["capabilities"]["drop"] == ["ALL"]
                    assert container["resources"]["requests"] and container["resources"]["limits"]
                    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
                    assert container["livenessProbe"]["httpGet"]["path"] in (
                        "/healthz",
                        "/health/liveness",
                    )


def test_bundled_hypha_runs_uvicorn_without_per_message_deflate(helm_env: dict[str, str]) -> None:
    objects = list(yaml.safe_load_all(template(helm_env, *CONFIGURATIONS["bundled-hypha"])))
    hypha = next(
        o
        for o in objects
        if o and o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-hypha")
    )
    container = hypha["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["uvicorn"]
    assert container["args"][0] == "hypha.server:app"
    assert "--ws-per-message-deflate=false" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HYPHA_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "HYPHA_JWT_SECRET"
    assert "HYPHA_SERVER_ID" in env
    bridge = next(
        o
        for o in objects
        if o and o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-bridge")
    )
    bridge_env = {e["name"]: e for e in bridge["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (
        bridge_env["HYPHA_SERVER_URL"]["value"]
        == "http://bioengine-bioengine-operator-hypha.default.svc:9527"
    )
    # The bridge reads a token minted for it; only its init container sees the JWT secret,
    # and no part of the bridge pod sees the root token.
    assert bridge_env["HYPHA_TOKEN_FILE"]["value"] == "/var/run/bioengine/hypha/token"
    assert "HYPHA_TOKEN" not in bridge_env and "HYPHA_JWT_SECRET" not in bridge_env
    (init,) = bridge["spec"]["template"]["spec"]["initContainers"]
    init_env = {e["name"]: e for e in init["env"]}
    assert init_env["HYPHA_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "HYPHA_JWT_SECRET"
    assert "HYPHA_ROOT_TOKEN" not in json.dumps(bridge)


def test_metrics_services_and_service_monitors(helm_env: dict[str, str]) -> None:
    objects = [
        o
        for o in yaml.safe_load_all(
            template(helm_env, *BRIDGE, "--set=metrics.serviceMonitor.enabled=true")
        )
        if o
    ]
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceMonitor"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    full = "bioengine-bioengine-operator"
    assert sorted(monitors) == [f"{full}-bridge", f"{full}-operator"]
    for name, monitor in monitors.items():
        service = services[f"{name}-metrics"]
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
        pod = deployments[name]["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9090"
        ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 9090


# -- the session cluster ------------------------------------------------------------------------


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
def test_every_rendered_object_passes_a_server_side_dry_run(
    cluster: devcluster.DevCluster, namespace: str, helm_env: dict[str, str], configuration: str
) -> None:
    values = CONFIGURATIONS[configuration]
    if configuration == "watch-namespaces":
        values = (*BRIDGE, f"--set=watchNamespaces={{{namespace}}}")
    rendered = template(helm_env, *values, namespace=namespace, crds=True)
    result = cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "-f",
        "-",
        stdin=rendered,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(applied) == len([o for o in yaml.safe_load_all(rendered) if o])


def test_install_upgrade_uninstall(
    cluster: devcluster.DevCluster, namespace: str, helm_env: dict[str, str]
) -> None:
    release = "bioengine-operator"  # the full name is then the release name
    kubeconfig = cluster.kubeconfig
    try:
        installed = install(helm_env, release, namespace, kubeconfig, *BRIDGE)
        assert "kubectl get bea,mr,bed -A" in installed.stdout  # NOTES.txt
        assert 'get_service("bioengine-test/<id>")' in installed.stdout

        for component in ("operator", "bridge"):
            name = f"{release}-{component}"
            wait_for(lambda n=name: deployment_ready(cluster, namespace, n), f"{name} Ready")
            selector = (
                f"app.kubernetes.io/instance={release},app.kubernetes.io/component={component}"
            )
            wait_for(
                lambda s=selector: [p for p in pods(cluster, namespace, s) if pod_ready(p)],
                f"{component} pod Ready",
            )
        for crd in CRD_NAMES:
            assert cluster.kubectl("get", crd, check=False).returncode == 0

        # Least privilege, as the API server decides it.
        operator_sa = f"system:serviceaccount:{namespace}:{release}-operator"
        bridge_sa = f"system:serviceaccount:{namespace}:{release}-bridge"
        elsewhere = "--namespace=kube-public"
        assert can_i(cluster, operator_sa, "create", "deployments.apps", elsewhere)
        assert not can_i(cluster, operator_sa, "delete", "deployments.apps", elsewhere)
        assert not can_i(cluster, operator_sa, "update", "deployments.apps", elsewhere)
        assert can_i(
            cluster, operator_sa, "patch", "modelrunners.bioengine.bioimage.io/status", elsewhere
        )
        for verb in ("get", "list", "create"):
            assert not can_i(cluster, operator_sa, verb, "secrets", elsewhere)
        assert not can_i(cluster, operator_sa, "create", "pods", elsewhere)
        assert not can_i(
            cluster, operator_sa, "delete", "modelrunners.bioengine.bioimage.io", elsewhere
        )
        assert not can_i(cluster, operator_sa, "list", "nodes")
        assert not can_i(cluster, operator_sa, "create", "clusterroles.rbac.authorization.k8s.io")
        assert not can_i(
            cluster, operator_sa, "update", "customresourcedefinitions.apiextensions.k8s.io"
        )
        for verb in ("get", "list", "watch"):
            assert not can_i(cluster, bridge_sa, verb, "secrets", elsewhere)
        assert can_i(cluster, bridge_sa, "watch", "modelrunners.bioengine.bioimage.io", elsewhere)
        assert not can_i(
            cluster, bridge_sa, "patch", "modelrunners.bioengine.bioimage.io", elsewhere
        )
        assert not can_i(cluster, bridge_sa, "create", "deployments.apps", elsewhere)

        # An upgrade with a changed value rolls the Deployment to a new, Ready pod.
        operator_name = f"{release}-operator"
        before = get(cluster, namespace, "deployment", operator_name)
        assert env_of(before)["BIOENGINE_LOG_FORMAT"] == "json"
        helm(
            helm_env,
            "upgrade",
            release,
            str(CHART),
            f"--namespace={namespace}",
            "--reuse-values",
            "--set=operator.logFormat=text",
            "--set=operator.resyncSeconds=5",
            kubeconfig=kubeconfig,
        )
        after = get(cluster, namespace, "deployment", operator_name)
        assert after["metadata"]["generation"] > before["metadata"]["generation"]
        assert env_of(after)["BIOENGINE_LOG_FORMAT"] == "text"
        assert env_of(after)["BIOENGINE_RESYNC_SECONDS"] == "5"
        wait_for(
            lambda: deployment_ready(cluster, namespace, operator_name), "upgraded operator Ready"
        )
        selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"

        def rolled() -> bool:
            now = pods(cluster, namespace, selector)
            return (
                len(now) == 1
                and pod_ready(now[0])
                and env_of({"spec": {"template": now[0]}})["BIOENGINE_LOG_FORMAT"] == "text"
            )

        wait_for(rolled, "one Ready operator pod with the new setting")
        history = json.loads(
            helm(
                helm_env,
                "history",
                release,
                f"--namespace={namespace}",
                "-o",
                "json",
                kubeconfig=kubeconfig,
            ).stdout
        )
        assert [h["revision"] for h in history] == [1, 2]
    finally:
        uninstall(helm_env, release, namespace, kubeconfig)

    instance = f"app.kubernetes.io/instance={release}"
    wait_for(
        lambda: (
            not json.loads(
                cluster.kubectl(
                    "-n", namespace, "get", "deployments", "-l", instance, "-o", "json"
                ).stdout
            )["items"]
        ),
        "Deployments removed",
    )
    leftovers = cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", instance, "-o", "name"
    ).stdout
    assert namespace not in leftovers
    for crd in CRD_NAMES:  # Helm never deletes what it installed from crds/
        assert cluster.kubectl("get", crd, check=False).returncode == 0


def test_bundled_hypha_keeps_its_secrets_across_upgrades(
    cluster: devcluster.DevCluster, namespace: str, helm_env: dict[str, str]
) -> None:
    release, kubeconfig = "selfcontained", cluster.kubeconfig
    secret_name = "selfcontained-bioengine-operator-hypha"

    def secret() -> dict[str, str]:
        return dict(get(cluster, namespace, "secret", secret_name)["data"])

    try:
        install(helm_env, release, namespace, kubeconfig, *CONFIGURATIONS["bundled-hypha"])
        first = secret()
        assert all(len(base64.b64decode(v)) == 64 for v in first.values())
        for component in ("operator", "bridge", "hypha"):
            name = f"{release}-bioengine-operator-{component}"
            wait_for(lambda n=name: deployment_ready(cluster, namespace, n), f"{name} Ready")
        helm(
            helm_env,
            "upgrade",
            release,
            str(CHART),
            f"--namespace={namespace}",
            "--reuse-values",
            "--set=hypha.serverId=renamed",
            kubeconfig=kubeconfig,
        )
        hypha = get(cluster, namespace, "deployment", f"{release}-bioengine-operator-hypha")
        assert env_of(hypha)["HYPHA_SERVER_ID"] == "renamed"
        assert secret() == first  # tokens issued before the upgrade stay valid
    finally:
        uninstall(helm_env, release, namespace, kubeconfig)


# -- a second control plane ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def denbi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.DevCluster]:
    """A second control plane beside the session one (its own ports, KubeRay CRDs only)."""
    dev = devcluster.DevCluster(
        tmp_path_factory.mktemp("denbi"), name="bioengine-denbi", kuberay_operator=False, audit=True
    )
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


def token_kubeconfig(dev: devcluster.DevCluster, namespace: str, account: str, path: Path) -> Path:
    token = dev.kubectl("-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sa",
                "cluster": {"server": dev.server, "certificate-authority": str(dev.pki.ca_cert)},
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "sa", "user": account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def workload(name: str) -> str:
    """The examples of every kind under names of their own, plus one of each kind carrying the
    finalizer of earlier operator versions (which the operator must be allowed to remove)."""
    docs = [
        d
        for path in sorted((ROOT / "examples").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        if doc["kind"] in ("ModelRunner", "BioEngineApp", "BioEngineDataset"):
            if doc["kind"] == "ModelRunner":
                doc["metadata"]["name"] = name
                doc["spec"]["service"]["id"] = name
            legacy = copy.deepcopy(doc)
            legacy["metadata"]["name"] = f"legacy-{doc['metadata']['name']}"[:40]
            legacy["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
            legacy["spec"].pop("service", None)
            if doc["kind"] == "ModelRunner":  # small: the fake nodes' CPUs are counted
                legacy["spec"].update(replicas=1, resources={"cpu": "100m", "memory": "128Mi"})
            out.append(legacy)
        out.append(doc)
    return yaml.safe_dump_all(out)


Triple = tuple[str, str, str]  # apiGroup, resource[/subresource], verb


def used_rbac(audit_log: Path, user: str, since_line: int) -> set[Triple]:
    """What ``user`` asked the API server for, from its audit log, as RBAC would name it."""
    used = set()
    for line in audit_log.read_text().splitlines()[since_line:]:
        event = json.loads(line)
        ref = event.get("objectRef")
        if event["user"]["username"] != user or not ref or "resource" not in ref:
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
            used.add((ref.get("apiGroup", ""), resource, "create"))  # apply made the object
    return used


def granted_rbac(dev: devcluster.DevCluster, release: str, component: str) -> set[Triple]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component={component}"
    roles = json.loads(
        dev.kubectl("get", "clusterroles,roles", "-A", "-l", selector, "-o", "json").stdout
    )["items"]
    return {
        (group, resource, verb)
        for role in roles
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def reconcile_with_chart_rbac(
    dev: devcluster.DevCluster,
    system: str,
    workload_ns: str,
    runner: str,
    log: Path,
    extra_args: tuple[str, ...],
) -> None:
    """Run the real operator and bridge with only tokens of the chart's ServiceAccounts, on
    every kind; then every verb the chart grants each of them must have been used."""
    release = "bioengine-operator"
    accounts = {
        component: get(dev, system, "deployment", f"{release}-{component}")["spec"]["template"][
            "spec"
        ]["serviceAccountName"]
        for component in ("operator", "bridge")
    }
    kubeconfigs = {
        component: token_kubeconfig(
            dev, system, account, log.with_suffix(f".{component}.kubeconfig")
        )
        for component, account in accounts.items()
    }
    users = {c: f"system:serviceaccount:{system}:{account}" for c, account in accounts.items()}
    signed_in = run(
        [
            "kubectl",
            f"--kubeconfig={kubeconfigs['operator']}",
            "auth",
            "can-i",
            "list",
            "secrets",
            "-A",
        ],
        check=False,
    )
    assert signed_in.stdout.strip() == "no"  # the operator's own account, not an admin
    audit_start = len(dev.audit_log.read_text().splitlines())

    # OperatorProcess only reads .kubeconfig from its cluster argument.
    running = operator_process.OperatorProcess(
        types.SimpleNamespace(kubeconfig=kubeconfigs["operator"]),  # type: ignore[arg-type]
        log,
        extra_args=extra_args,
    )
    bridge_log = log.with_suffix(".bridge.log")
    token = log.with_suffix(".hypha-token")
    token.write_text("not-a-token")  # no Hypha here: the bridge only watches
    bridge = procs.spawn(
        [
            sys.executable,
            "-m",
            "bioengine_operator.bridge",
            f"--server-url=http://127.0.0.1:{devcluster.free_port()}",
            "--workspace=bioengine-lab",
            f"--token-file={token}",
            "--log-format=json",
            *extra_args,
        ],
        bridge_log,
        env={**os.environ, "KUBECONFIG": str(kubeconfigs["bridge"])},
    )
    running.start()
    try:
        dev.kubectl("-n", workload_ns, "apply", "-f", "-", stdin=workload(runner))
        wait_for(
            lambda: status(dev, workload_ns, "mr", runner).get("phase") == "Ready",
            f"{runner} Ready",
            timeout=120,
        )
        assert status(dev, workload_ns, "mr", runner)["ready"] == "4/4"
        for kind in ("bea", "bed", "mr"):

            def settled(k: str = kind) -> bool:
                found = json.loads(dev.kubectl("-n", workload_ns, "get", k, "-o", "json").stdout)
                return all(
                    o.get("status", {}).get("phase") and not o["metadata"].get("finalizers")
                    for o in found["items"]
                )

            wait_for(settled, f"every {kind} reconciled, old finalizers removed", timeout=120)

        def names(kind: str) -> set[str]:
            found = json.loads(dev.kubectl("-n", workload_ns, "get", kind, "-o", "json").stdout)
            return {o["metadata"]["name"] for o in found["items"]}

        # An app applied with its dataset may first find the dataset missing (Pending) and
        # make its RayService on the retry: wait for that, so every grant gets used.
        wait_for(lambda: names("bea") <= names("rayservices"), "every app's RayService", 120)
        wait_for(
            lambda: (
                {
                    ("bioengine.bioimage.io", r, v)
                    for r in ("bioengineapps", "modelrunners", "bioenginedatasets")
                    for v in ("list", "watch")
                }
                <= used_rbac(
                    dev.audit_log,
                    f"system:serviceaccount:{system}:{accounts['bridge']}",
                    audit_start,
                )
            ),
            "the bridge watches every kind",
        )
    finally:
        running.stop()
        procs.stop_group(bridge.pid)
    for component, path in (("operator", log), ("bridge", bridge_log)):
        denied = [
            line
            for line in path.read_text().splitlines()
            if re.search(r"forbidden|\b403\b", line, re.I)
        ]
        assert not denied, f"the {component} was refused something:\n" + "\n".join(denied[:5])
        used = used_rbac(dev.audit_log, users[component], audit_start)
        unused = granted_rbac(dev, release, component) - used
        assert not unused, f"the chart grants the {component} what it never used: {sorted(unused)}"


def test_real_operator_reconciles_with_only_the_charts_rbac(
    denbi: devcluster.DevCluster, helm_env: dict[str, str], tmp_path: Path
) -> None:
    dev, system, release = denbi, "bioengine-system", "bioengine-operator"
    # Start from a cluster without our CRDs, so the install below is what creates them.
    dev.kubectl("delete", "--ignore-not-found", "--wait", *CRD_NAMES)
    assert all(dev.kubectl("get", crd, check=False).returncode != 0 for crd in CRD_NAMES)
    for ns in ("team-a", "team-b"):
        dev.kubectl("create", "namespace", ns)
    try:
        install(helm_env, release, system, dev.kubeconfig, "--create-namespace", *BRIDGE)
        dev.kubectl("wait", "--for=condition=Established", "--timeout=60s", *CRD_NAMES)

        # Cluster-wide (the default): a ClusterRole for the application rules.
        reconcile_with_chart_rbac(dev, system, "team-a", "unet-a", tmp_path / "clusterwide.log", ())

        # Per namespace: only team-b is granted, through a Role; the operator watches only it.
        helm(
            helm_env,
            "upgrade",
            release,
            str(CHART),
            f"--namespace={system}",
            "--reuse-values",
            "--set=watchNamespaces={team-b}",
            kubeconfig=dev.kubeconfig,
        )
        sa = f"system:serviceaccount:{system}:{release}-operator"
        assert can_i(dev, sa, "create", "deployments.apps", "--namespace=team-b")
        assert not can_i(dev, sa, "create", "deployments.apps", "--namespace=team-a")
        deploy = get(dev, system, "deployment", f"{release}-operator")
        args = tuple(deploy["spec"]["template"]["spec"]["containers"][0]["args"])
        assert args == ("--namespace=team-b",)
        reconcile_with_chart_rbac(
            dev, system, "team-b", "unet-b", tmp_path / "namespaced.log", args
        )
    finally:
        uninstall(helm_env, release, system, dev.kubeconfig)
        dev.kubectl("delete", "namespace", "team-a", "team-b", "--wait=false", check=False)
    assert not get(dev, system, "deployment", f"{release}-operator")
    # The CRDs this release installed outlive it (and with them every BioEngine resource).
    for crd in CRD_NAMES:
        assert dev.kubectl("get", crd, check=False).returncode == 0


# What the worker does with each of its grants, with nothing but the chart's bridge account:
# an upload (create), the same version again (patch), a deploy (create) and an update
# (patch), status, datasets, a stop (get, delete) and a delete of the upload.
WORKER_PROBE = """
import asyncio, json, sys
from pathlib import Path
from bioengine_operator.bridge.endpoints import Endpoints
from bioengine_operator.bridge.worker import KubeObjects, Worker

def folder_files(folder):
    return [
        {"name": p.relative_to(folder).as_posix(), "content": p.read_text(), "type": "text"}
        for p in sorted(folder.rglob("*")) if p.is_file() and "tests" not in p.parts
    ]

async def main(namespace, folder):
    worker = Worker(KubeObjects(namespace), "ws", "rbac", "bioengine-bridge-rbac", ("alice",),
                    Endpoints(), lambda: None, lambda name: False)
    admin = {"user": {"id": "alice"}}
    files = folder_files(Path(folder))
    artifact = await worker.upload_app(files=files, context=admin)
    await worker.upload_app(files=files, context=admin)
    await worker.deploy_app(artifact_id=artifact, application_id="rbac-app", context=admin)
    await worker.deploy_app(
        artifact_id=artifact, application_id="rbac-app", disable_gpu=True, context=admin
    )
    status = await worker.get_app_status(application_ids=["rbac-app"], context=admin)
    datasets = await worker.list_datasets(context=admin)
    await worker.stop_app(application_id="rbac-app", context=admin)
    await worker.delete_app(artifact, context=admin)
    print(json.dumps({"status": status["rbac-app"]["status"], "datasets": sorted(datasets)}))

asyncio.run(main(*sys.argv[1:]))
"""


def test_the_worker_works_with_only_the_charts_rbac(
    denbi: devcluster.DevCluster, helm_env: dict[str, str], tmp_path: Path
) -> None:
    dev, system, release, apps_ns = denbi, "bioengine-worker-system", "bioengine-operator", "lab"
    dev.kubectl("create", "namespace", apps_ns)
    try:
        install(
            helm_env,
            release,
            system,
            dev.kubeconfig,
            "--create-namespace",
            *BRIDGE,
            "--set=bridge.worker.enabled=true",
            f"--set=bridge.worker.namespace={apps_ns}",
            "--set=bridge.worker.adminUsers={alice}",
        )
        account = get(dev, system, "deployment", f"{release}-bridge")["spec"]["template"]["spec"][
            "serviceAccountName"
        ]
        kubeconfig = token_kubeconfig(dev, system, account, tmp_path / "bridge.kubeconfig")
        audit_start = len(dev.audit_log.read_text().splitlines())
        probe = run(
            [sys.executable, "-c", WORKER_PROBE, apps_ns, str(ROOT / "apps/nucleus-segmentation")],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
        assert json.loads(probe.stdout.splitlines()[-1]) == {"status": "DEPLOYING", "datasets": []}
        role = get(dev, apps_ns, "role", f"{release}-worker")
        granted = {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        used = used_rbac(dev.audit_log, f"system:serviceaccount:{system}:{account}", audit_start)
        assert not granted - used, f"granted to the worker, never used: {sorted(granted - used)}"
        # Nothing outside its namespace: the same account may not write next door.
        who = f"system:serviceaccount:{system}:{account}"
        assert not can_i(dev, who, "create", "configmaps", f"--namespace={system}")
        assert not can_i(dev, who, "create", "bioengineapps.bioengine.bioimage.io", "-A")
    finally:
        uninstall(helm_env, release, system, dev.kubeconfig)
        dev.kubectl("delete", "namespace", apps_ns, "--wait=false", check=False)


# -- two clusters with Helmsman -----------------------------------------------------------------


@pytest.fixture(scope="module")
def two_contexts(
    cluster: devcluster.DevCluster,
    denbi: devcluster.DevCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """One kubeconfig holding both clusters as the contexts "gke" and "denbi"."""
    merged = tmp_path_factory.mktemp("contexts") / "kubeconfig"
    env = {**os.environ, "KUBECONFIG": f"{cluster.kubeconfig}:{denbi.kubeconfig}"}
    merged.write_text(run(["kubectl", "config", "view", "--flatten"], env=env).stdout)
    merged.chmod(0o600)
    for old, new in ((cluster.name, "gke"), (denbi.name, "denbi")):
        run(["kubectl", f"--kubeconfig={merged}", "config", "rename-context", old, new])
    return merged


def desired_state(cluster_file: str) -> dict[str, Any]:
    """desired-state.yaml merged with one cluster's file, later values winning (as Helmsman)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            out[key] = (
                merge(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
        return out

    base = yaml.safe_load((HELMSMAN_DIR / "desired-state.yaml").read_text())
    return merge(base, yaml.safe_load((HELMSMAN_DIR / cluster_file).read_text()))


def release_in(
    helm_env: dict[str, str], kubeconfig: Path, context: str, namespace: str, name: str
) -> dict[str, Any] | None:
    out = helm(
        helm_env,
        "list",
        f"--kube-context={context}",
        f"--namespace={namespace}",
        "-o",
        "json",
        kubeconfig=kubeconfig,
    ).stdout
    return next((r for r in json.loads(out) if r["name"] == name), None)


def check_rollout(
    cluster: devcluster.DevCluster,
    denbi: devcluster.DevCluster,
    helm_env: dict[str, str],
    kubeconfig: Path,
) -> None:
    for context, dev, cluster_file in (
        ("gke", cluster, "gke.yaml"),
        ("denbi", denbi, "denbi.yaml"),
    ):
        state = desired_state(cluster_file)
        for name, app in state["apps"].items():
            release = release_in(helm_env, kubeconfig, context, app["namespace"], name)
            assert release and release["status"] == "deployed", (context, release)
            assert release["chart"] == f"bioengine-operator-{app['version']}"
            for component in ("operator", "bridge"):
                wait_for(
                    lambda d=dev, ns=app["namespace"], n=f"{name}-{component}": deployment_ready(
                        d, ns, n
                    ),
                    f"{context}: {component} Ready",
                )
    # Each cluster got its own overlay.
    gke_bridge = get(cluster, "bioengine", "deployment", "bioengine-operator-bridge")
    assert "gke-spot" in json.dumps(gke_bridge["spec"]["template"]["spec"]["affinity"])
    denbi_operator = get(denbi, "bioengine", "deployment", "bioengine-operator-operator")
    assert denbi_operator["spec"]["template"]["spec"]["nodeSelector"] == {
        "bioengine.bioimage.io/pool": "cpu"
    }
    # One Hypha hub: both bridges in one workspace of one server, told apart by cluster name,
    # each with its worker service; no bundled server anywhere.
    denbi_bridge = get(denbi, "bioengine", "deployment", "bioengine-operator-bridge")
    envs = [env_of(gke_bridge), env_of(denbi_bridge)]
    for key in ("HYPHA_SERVER_URL", "HYPHA_WORKSPACE", "BIOENGINE_WORKER_NAMESPACE"):
        assert envs[0][key] == envs[1][key] != "", key
    assert [e["BIOENGINE_CLUSTER_NAME"] for e in envs] == ["gke", "denbi"]
    assert [e["BIOENGINE_BRIDGE_CLIENT_ID"] for e in envs] == [
        "bioengine-bridge-gke",
        "bioengine-bridge-denbi",
    ]
    for dev in (cluster, denbi):
        assert not get(dev, "bioengine", "deployment", "bioengine-operator-hypha")
        assert get(dev, "bioengine", "role", "bioengine-operator-worker")


def test_the_worker_gets_exactly_its_namespaced_rules(helm_env: dict[str, str]) -> None:
    """With the worker on, the bridge gets a Role in the worker's namespace only, for the
    uploads' ConfigMaps and the deployed BioEngineApps, and its env names both."""
    objects = [
        o
        for o in yaml.safe_load_all(
            template(
                helm_env,
                *CONFIGURATIONS["shared-hub"],
                "--set=bridge.worker.namespace=bioengine-apps",
            )
        )
        if o
    ]
    role = next(
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-worker")
    )
    assert role["metadata"]["namespace"] == "bioengine-apps"
    assert {(r["apiGroups"][0], r["resources"][0], tuple(r["verbs"])) for r in role["rules"]} == {
        ("", "configmaps", ("list", "create", "patch", "delete")),
        ("bioengine.bioimage.io", "bioengineapps", ("get", "list", "create", "patch", "delete")),
        ("bioengine.bioimage.io", "bioenginedatasets", ("list",)),
    }
    bridge = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("bridge")
    )
    env = env_of(bridge)
    assert env["BIOENGINE_CLUSTER_NAME"] == "gke"
    assert env["BIOENGINE_BRIDGE_CLIENT_ID"] == "bioengine-bridge-gke"
    assert env["BIOENGINE_WORKER_NAMESPACE"] == "bioengine-apps"
    assert env["BIOENGINE_WORKER_ADMINS"] == "bioengine-admin@example.org"
    # Without the worker: no Role, no write anywhere.
    plain = [o for o in yaml.safe_load_all(template(helm_env, *BRIDGE)) if o]
    assert not [o for o in plain if o["metadata"]["name"].endswith("-worker")]


def uninstall_everywhere(helm_env: dict[str, str], kubeconfig: Path) -> None:
    for context in ("gke", "denbi"):
        uninstall(
            helm_env, "bioengine-operator", "bioengine", kubeconfig, f"--kube-context={context}"
        )


def test_desired_state_rolls_out_to_both_clusters_with_helm(
    cluster: devcluster.DevCluster,
    denbi: devcluster.DevCluster,
    two_contexts: Path,
    helm_env: dict[str, str],
) -> None:
    """The releases Helmsman would make from the desired state, made with plain helm.

    Helmsman itself cannot be had here: the Go module proxy refuses its module (and that of
    helm-diff, which it needs). This reads the desired-state files themselves (chart path and
    version, values files, contexts) and rolls out to two control planes side by side.
    """
    try:
        for cluster_file in ("gke.yaml", "denbi.yaml"):
            state = desired_state(cluster_file)
            context = state["settings"]["kubeContext"]
            for name, app in state["apps"].items():
                chart = (HELMSMAN_DIR / app["chart"]).resolve()
                assert yaml.safe_load((chart / "Chart.yaml").read_text())["version"] == str(
                    app["version"]
                )
                values = [f"--values={(HELMSMAN_DIR / v).resolve()}" for v in app["valuesFiles"]]
                helm(
                    helm_env,
                    "upgrade",
                    "--install",
                    name,
                    str(chart),
                    f"--kube-context={context}",
                    f"--namespace={app['namespace']}",
                    "--create-namespace",
                    *values,
                    kubeconfig=two_contexts,
                )
        check_rollout(cluster, denbi, helm_env, two_contexts)
    finally:
        uninstall_everywhere(helm_env, two_contexts)
