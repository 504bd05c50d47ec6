"""deploy/kubernetes: every overlay rendered (a small kustomize, below) and validated offline against
the Kubernetes schemas bundled in kubernetes-validate, then checked for what mlscale needs: probes on
the v2 health endpoints, a PodDisruptionBudget per Deployment, an HPA on a request metric, Services
that select pods, and a mlscale.toml that mlscale itself accepts.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mlscale.config import parse_settings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if p.is_dir())
# What the renderer understands; a kustomization using anything else fails instead of being half-read.
KNOWN = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "generatorOptions", "patches",
         "images", "labels"}  # fmt: skip


def _merge(base: object, patch: object) -> object:
    """Strategic merge as kustomize does it for these files: maps recursively, lists of named maps by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in patch):
        out = list(base)
        names = [x.get("name") if isinstance(x, dict) else None for x in base]
        for item in patch:
            if item["name"] in names:
                out[names.index(item["name"])] = _merge(out[names.index(item["name"])], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def render(folder: Path) -> list[dict]:
    """The resources of a kustomization folder, as `kubectl kustomize` would give them (for the fields in KNOWN)."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    assert not unknown, f"{folder}: kustomization fields this test cannot render: {unknown}"
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    if spec.get("configMapGenerator"):
        assert spec.get("generatorOptions", {}).get("disableNameSuffixHash"), "names are referred to without hash"
    for generator in spec.get("configMapGenerator", []):
        data = {Path(f).name: (folder / f).read_text() for f in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for entry in spec.get("labels", []):
        assert not entry.get("includeSelectors"), "selectors are left alone"
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for patch_entry in spec.get("patches", []):
        patch = yaml.safe_load((folder / patch_entry["path"]).read_text())
        wanted = (patch["kind"], patch["metadata"]["name"])
        targets = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == wanted]
        assert len(targets) == 1, f"{patch_entry['path']} patches no resource (or several)"
        docs[targets[0]] = _merge(docs[targets[0]], patch)
    for image in spec.get("images", []):
        for container in (c for d in docs for c in _containers(d)):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if "namespace" in spec:
        for doc in docs:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def _containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def _pod_labels(doc: dict) -> dict:
    return doc["spec"]["template"]["metadata"]["labels"]


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict]:
    return render(KUBE / "overlays" / request.param)


def test_there_are_dev_and_production_overlays() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


def test_every_resource_is_valid_against_the_kubernetes_schemas(rendered: list[dict]) -> None:
    version = kubernetes_validate.latest_version()
    for doc in rendered:
        # strict: an unknown field (a typo such as readinesProbe) is an error, not ignored.
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds


def test_a_typo_in_a_manifest_is_caught() -> None:
    # The oracle really looks: the same Deployment with a misspelt probe field fails.
    server = next(d for d in render(KUBE / "base") if d["kind"] == "Deployment")
    broken = copy.deepcopy(server)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_server_probes_are_the_v2_health_endpoints(rendered: list[dict]) -> None:
    server = next(d for d in _by_kind(rendered, "Deployment") if d["metadata"]["name"] == "mlscale-server")
    container = _containers(server)[0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_server_stream_and_vision_workers_are_deployments_each_with_a_disruption_budget(rendered: list[dict]) -> None:
    deployments = {d["metadata"]["name"]: d for d in _by_kind(rendered, "Deployment")}
    assert {"mlscale-server", "mlscale-stream-worker", "mlscale-vision-worker"} <= set(deployments)
    budgets = _by_kind(rendered, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = _pod_labels(deployment)
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, f"{name} has {len(covering)} PodDisruptionBudgets"
        for container in _containers(deployment):
            assert container["livenessProbe"], f"{name} has no liveness probe"
        pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert pod_security["runAsNonRoot"] and pod_security["runAsUser"] != 0


def test_services_select_pods_and_the_autoscaler_scales_the_server_on_requests(rendered: list[dict]) -> None:
    pods = [_pod_labels(d) for d in _by_kind(rendered, "Deployment")]
    for service in _by_kind(rendered, "Service"):
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pods)
    (hpa,) = _by_kind(rendered, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] in {d["metadata"]["name"] for d in _by_kind(rendered, "Deployment")}
    metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert metrics == ["mlscale_inflight_requests"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_config_map_holds_a_mlscale_toml_that_mlscale_accepts(rendered: list[dict]) -> None:
    config_maps = {d["metadata"]["name"]: d for d in _by_kind(rendered, "ConfigMap")}
    for deployment in _by_kind(rendered, "Deployment"):
        for volume in deployment["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
    text = config_maps["mlscale-config"]["data"]["mlscale.toml"]
    settings = parse_settings(tomllib.loads(text), root="/etc/mlscale")
    assert settings.server.host == "0.0.0.0"
    assert settings.streams.broker.startswith("nats://")


def test_production_overlay_changes_what_it_says(rendered: list[dict]) -> None:
    namespaces = {d["metadata"].get("namespace") for d in rendered}
    assert len(namespaces) == 1 and None not in namespaces
    if namespaces == {"mlscale"}:
        server = next(d for d in _by_kind(rendered, "Deployment") if d["metadata"]["name"] == "mlscale-server")
        assert server["spec"]["replicas"] == 3
        assert _containers(server)[0]["image"] == "registry.example.com/mlscale:0.1.0"
        assert _containers(server)[0]["readinessProbe"]  # the patch merged, it did not replace the container


def test_validation_needs_no_network() -> None:
    # In a network namespace of its own (no interface but a down loopback) the validator still works.
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    code = (
        "import kubernetes_validate as k\n"
        "k.validate({'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': 'a'},"
        " 'spec': {'ports': [{'port': 80}]}}, k.latest_version(), strict=True)\n"
        "print('ok')\n"
    )
    done = subprocess.run([unshare, "-n", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"cannot make a network namespace here: {done.stderr.strip()}")
    assert done.stdout.strip() == "ok", done.stderr


def test_dockerfile_is_multi_stage_slim_and_runs_as_an_unprivileged_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and all("slim" in s for s in stages)
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    deployments = [d for overlay in OVERLAYS for d in _by_kind(render(KUBE / "overlays" / overlay), "Deployment")]
    uid = int(user[-1].split(":")[0])
    assert all(d["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid for d in deployments)
