"""`baton k8s render`: the KubeRay manifests validate against KubeRay's v1.7.0 CRD schemas
(../shared/k8s/kuberay-crds), carry the orchestra's Serve config and worker groups, and the
checked-in copies in cluster/k8s/ are what the default orchestra renders today."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from serve.agent import deployment_name
from serve.builder import INGRESS, load, serve_config
from serve.k8s import FILES, render, write

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "k8s" / "kuberay-crds"
ORCHESTRA = REPO / "configs" / "orchestra.yaml"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}

pytestmark = pytest.mark.skipif(not CRDS.is_dir(), reason=f"KubeRay CRDs not found at {CRDS}")


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.protocols.Validator]:
    out = {}
    for kind, name in CRD_FILES.items():
        crd = yaml.safe_load((CRDS / name).read_text())
        [v1] = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
        schema = v1["schema"]["openAPIV3Schema"]
        out[kind] = jsonschema.Draft7Validator(schema)
    return out


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return render(ORCHESTRA, REPO)


def errors(validator, manifest: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_each_manifest_validates_against_its_kuberay_crd(validators, manifests, kind):
    manifest = manifests[kind]
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert errors(validators[kind], manifest) == []


def test_the_validation_catches_a_broken_manifest(validators, manifests):
    broken = yaml.safe_load(yaml.safe_dump(manifests["RayCluster"]))
    del broken["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    broken["spec"]["enableInTreeAutoscaling"] = "yes"
    found = errors(validators["RayCluster"], broken)
    assert any("maxReplicas" in e for e in found) and any("enableInTreeAutoscaling" in e for e in found)


def test_the_cluster_has_cpu_gpu_and_trainium_groups_and_autoscales(manifests):
    spec = manifests["RayCluster"]["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu", "trainium"}
    limits = {name: g["template"]["spec"]["containers"][0]["resources"]["limits"] for name, g in groups.items()}
    assert "nvidia.com/gpu" not in limits["cpu"] and "aws.amazon.com/neuron" not in limits["cpu"]
    assert limits["gpu"]["nvidia.com/gpu"] == 1 and groups["gpu"]["rayStartParams"]["num-gpus"] == "1"
    assert limits["trainium"]["aws.amazon.com/neuron"] == 1
    assert all(g["minReplicas"] <= g["maxReplicas"] for g in groups.values())
    head = spec["headGroupSpec"]
    env = {e["name"]: e["value"] for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "serve.proxy:proxy_middlewares" and env["HF_HUB_OFFLINE"] == "1"
    assert manifests["RayService"]["spec"]["rayClusterConfig"] == spec == manifests["RayJob"]["spec"]["rayClusterSpec"]


def test_the_service_carries_the_orchestras_serve_config_for_the_image(manifests):
    carried = yaml.safe_load(manifests["RayService"]["spec"]["serveConfigV2"])
    [app] = carried["applications"]
    config = load(ORCHESTRA, None, REPO)
    # Every version of the orchestra, registry ones included: the cluster resolves their aliases.
    every = [INGRESS] + [deployment_name(a.name, v.version) for a in config.agents if not a.composite for v in a.versions]
    assert [d["name"] for d in app["deployments"]] == every
    [local_app] = serve_config(ORCHESTRA, REPO)["applications"]
    local = {d["name"]: d for d in local_app["deployments"]}
    assert all(d == local[d["name"]] for d in app["deployments"] if d["name"] in local)
    assert app["args"] == {"config": "/app/configs/orchestra.yaml", "base_dir": "/app"}
    assert carried["http_options"]["host"] == "0.0.0.0" and carried["http_options"]["port"] == 8000


def test_the_job_fine_tunes_with_the_configured_recipe(manifests):
    job = manifests["RayJob"]["spec"]
    assert job["entrypoint"] == "python -m train.finetune --config configs/train/sst2_sentiment.yaml"
    assert (REPO / "configs" / "train" / "sst2_sentiment.yaml").is_file()
    assert yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert job["shutdownAfterJobFinishes"] is True


def test_the_checked_in_manifests_are_a_fresh_render(manifests, tmp_path):
    written = write(manifests, tmp_path)
    assert sorted(p.name for p in written) == sorted(FILES.values())
    for path in written:
        assert (REPO / "cluster" / "k8s" / path.name).read_text() == path.read_text(), f"rerun `baton k8s render` ({path.name} is stale)"
