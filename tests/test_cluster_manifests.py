"""The cluster manifests are valid KubeRay resources and agree with the code, configs and image.

- Schema: every manifest under cluster/kuberay/ validates against the openAPIV3Schema of its
  CRD (tests/kuberay-crds/, KubeRay v1.7.0-rc.0), translated to JSON Schema: int-or-string
  becomes anyOf, and objects reject unknown fields unless marked preserve-unknown-fields (as
  `kubectl apply` with strict field validation does). CEL rules (x-kubernetes-validations) are
  not evaluated.
- Cross-checks: entrypoints are real `ils` subcommands whose --config is mounted from the
  ConfigMap and exists in configs/; custom resources and GPU/CPU sizes fit configs/cluster.yaml;
  image tags equal the pyproject version; Ray versions agree; the Dockerfile installs the
  extras pyproject declares; serveConfigV2 matches serve/config.yaml; no credentials in files.

Every check is a function returning a list of problems; each is also run on a deliberately
broken copy to show that it can fail.
"""

from __future__ import annotations

import copy
import gzip
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "cluster" / "kuberay"
LAUNCHER = ROOT / "cluster" / "launcher" / "aws-gpu.yaml"
CRD_DIR = Path(__file__).resolve().parent / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml.gz", "RayJob": "ray.io_rayjobs.yaml.gz", "RayService": "ray.io_rayservices.yaml.gz"}
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"ghcr.io/ils-project/ils:{VERSION}"


# ----------------------------------------------------------------------------- loading


def load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path.name}: one resource per file"
    return docs[0]


def manifests() -> dict[str, dict]:
    return {p.name: load(p) for p in MANIFESTS}


def to_jsonschema(node: Any) -> Any:
    """Translate a structural k8s openAPIV3Schema into strict JSON Schema."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **{k: v for k, v in out.items() if k != "anyOf"}}
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_schema(kind: str) -> dict:
    crd = yaml.safe_load(gzip.open(CRD_DIR / CRD_FILES[kind]))
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = to_jsonschema(version["schema"]["openAPIV3Schema"])
    # metadata is validated by the API server's ObjectMeta, not by the CRD: accept it as is.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


_SCHEMAS: dict[str, dict] = {}


def schema_problems(doc: dict) -> list[str]:
    kind = doc.get("kind")
    if doc.get("apiVersion") != "ray.io/v1" or kind not in CRD_FILES:
        return [f"apiVersion/kind {doc.get('apiVersion')}/{kind} is not a KubeRay v1 resource"]
    if kind not in _SCHEMAS:
        _SCHEMAS[kind] = crd_schema(kind)
    validator = jsonschema.Draft7Validator(_SCHEMAS[kind])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


# ----------------------------------------------------------------------------- helpers


def cluster_specs(doc: dict) -> list[dict]:
    """The RayCluster spec(s) a resource defines (none for a RayJob that selects a cluster)."""
    spec = doc["spec"]
    return [s for s in (spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec") or spec.get("rayClusterConfig"),) if s]


def group_resources(group: dict) -> dict[str, float]:
    """Ray resources of one node of a worker group: CPU, GPU and the custom ones."""
    params = group.get("rayStartParams") or {}
    out: dict[str, float] = {}
    if "num-cpus" in params:
        out["CPU"] = float(params["num-cpus"])
    if "num-gpus" in params:
        out["GPU"] = float(params["num-gpus"])
    raw = params.get("resources")
    if raw:
        parsed = yaml.safe_load(yaml.safe_load(raw)) if raw.startswith('"') else yaml.safe_load(raw)
        out.update({k: float(v) for k, v in parsed.items()})
    out.update({k: float(v) for k, v in (group.get("resources") or {}).items()})
    return out


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def cpu_quantity(q: Any) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def main_config():
    from ils.config import load_config

    return load_config(ROOT / "configs" / "cluster.yaml")


# ----------------------------------------------------------------------------- checks


def check_entrypoint(doc: dict) -> list[str]:
    """A RayJob's entrypoint is an `ils` subcommand whose --config is shipped by a ConfigMap."""
    if doc["kind"] != "RayJob":
        return []
    from ils.cli import COMMANDS, build_parser, split_overrides
    from ils.config import ConfigError, load_config

    argv = shlex.split(doc["spec"]["entrypoint"])
    if not argv or argv[0] != "ils":
        return [f"entrypoint must start with `ils`: {argv[:1]}"]
    try:  # as ils.cli.main parses
        args, unknown = build_parser().parse_known_args(argv[1:])
    except SystemExit:
        return [f"`{doc['spec']['entrypoint']}` does not parse as an ils command line"]
    problems = []
    if args.command not in COMMANDS:
        problems.append(f"unknown subcommand {args.command}")
    overrides, others = split_overrides(list(getattr(args, "rest", []) or []) + unknown)
    if others:
        problems.append(f"unknown options or stray positionals {others}")
    config = Path(args.config)
    repo_config = ROOT / "configs" / config.name
    if not repo_config.is_file():
        problems.append(f"--config {config} names no file in configs/")
    else:
        try:
            load_config(repo_config, overrides)
        except ConfigError as exc:
            problems.append(f"config does not load: {exc}")
    mounted = False
    specs = cluster_specs(doc) or [s for m in manifests().values() if m["kind"] == "RayCluster"
                                   and m["metadata"]["name"] == doc["spec"].get("clusterSelector", {}).get("ray.io/cluster")
                                   for s in cluster_specs(m)]
    if not specs:
        problems.append("the RayJob names neither rayClusterSpec nor an existing RayCluster by clusterSelector")
    for spec in specs:
        head = spec["headGroupSpec"]["template"]["spec"]
        volumes = {v["name"]: v for v in head.get("volumes", [])}
        for c in head["containers"]:
            for m in c.get("volumeMounts", []):
                vol = volumes.get(m["name"], {})
                if "configMap" in vol and Path(m["mountPath"]) == config.parent:
                    mounted = True
    if not mounted:
        problems.append(f"{config.parent} is not a ConfigMap mount on the head (where the driver runs)")
    return problems


def check_gen_resources(spec: dict, cfg) -> list[str]:
    """Each gen stage fits on a worker group that offers its custom resources, CPUs and GPUs."""
    problems = []
    groups = spec.get("workerGroupSpecs", [])
    for name in ("decode", "anatomy", "anomaly", "detect", "report"):
        stage = getattr(cfg.gen, name)
        need = {"CPU": stage.num_cpus, "GPU": getattr(stage, "num_gpus", 0.0), **getattr(stage, "resources", {})}
        fits = [g["groupName"] for g in groups
                if all(group_resources(g).get(k, 0.0) >= v for k, v in need.items() if v)]
        if not fits:
            problems.append(f"gen.{name} needs {need}: no worker group offers it")
    return problems


def check_group_pods(spec: dict) -> list[str]:
    """rayStartParams agree with the pod's limits (CPUs, nvidia.com/gpu)."""
    problems = []
    for g in spec.get("workerGroupSpecs", []):
        res = group_resources(g)
        limits = g["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        gpus = float(limits.get("nvidia.com/gpu", 0))
        if res.get("GPU", 0.0) != gpus:
            problems.append(f"group {g['groupName']}: num-gpus {res.get('GPU', 0)} but nvidia.com/gpu limit {gpus}")
        if "CPU" in res and "cpu" in limits and res["CPU"] > cpu_quantity(limits["cpu"]):
            problems.append(f"group {g['groupName']}: num-cpus {res['CPU']} over the cpu limit {limits['cpu']}")
        if gpus and "gpu_node" not in res:
            problems.append(f"group {g['groupName']}: a GPU group must offer the gpu_node resource")
        if g.get("minReplicas", 0) > g.get("maxReplicas", 0):
            problems.append(f"group {g['groupName']}: minReplicas > maxReplicas")
    return problems


def check_train_fits(spec: dict, cfg) -> list[str]:
    """train.num_workers workers of (1 GPU, cpus_per_worker CPUs) fit the GPU group."""
    need_cpu = cfg.train.cpus_per_worker
    slots = 0
    for g in spec.get("workerGroupSpecs", []):
        res = group_resources(g)
        if res.get("GPU", 0) >= 1 and res.get("CPU", 0) >= need_cpu:
            per_node = int(min(res["GPU"], res["CPU"] // need_cpu))
            slots += per_node * int(g.get("maxReplicas", 0))
    return [] if slots >= cfg.train.num_workers else [f"train needs {cfg.train.num_workers} GPU workers x {need_cpu} CPUs; cluster offers {slots}"]


def check_serve_fits(spec: dict, cfg) -> list[str]:
    """serve.autoscaling.max_replicas replicas of (num_gpus, num_cpus) fit the worker groups."""
    s = cfg.serve
    slots = 0
    for g in spec.get("workerGroupSpecs", []):
        res = group_resources(g)
        if s.num_gpus and res.get("GPU", 0) < s.num_gpus:
            continue
        per_node = int(res.get("CPU", 0) // s.num_cpus) if s.num_cpus else 1 << 30
        if s.num_gpus:
            per_node = min(per_node, int(res["GPU"] // s.num_gpus))
        slots += per_node * int(g.get("maxReplicas", 0))
    return [] if slots >= s.autoscaling.max_replicas else [f"serve max_replicas {s.autoscaling.max_replicas} but room for {slots}"]


def check_images_versions(doc: dict) -> list[str]:
    import ray

    problems = []
    pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray["))
    pinned = pin.split("==", 1)[1]
    for spec in cluster_specs(doc):
        if spec.get("rayVersion") != ray.__version__ or pinned != ray.__version__:
            problems.append(f"rayVersion {spec.get('rayVersion')} / installed {ray.__version__} / pyproject {pinned}")
        for c in containers(spec):
            if c["image"] != IMAGE:
                problems.append(f"container {c['name']} image {c['image']} != {IMAGE}")
    return problems


SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD)", re.I)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+]{30,}", re.I)


def check_no_credentials(doc: dict, text: str) -> list[str]:
    problems = [f"credential-like text: {m.group(0)[:12]}..." for m in SECRET_VALUE.finditer(text)]
    for spec in cluster_specs(doc):
        for c in containers(spec):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]) and "value" in e:
                    problems.append(f"env {e['name']} has a literal value: use a Secret")
            if not any("secretRef" in s for s in c.get("envFrom", [])):
                problems.append(f"container {c['name']} gets no S3 credentials from a Secret (envFrom)")
    return problems


def check_serve_config(doc: dict) -> list[str]:
    """serveConfigV2 has serve/config.yaml's applications (import path, name, route, args)."""
    if doc["kind"] != "RayService":
        return []
    import importlib

    ours = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ref = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    problems = []
    key = lambda a: (a["name"], a.get("route_prefix"), a["import_path"])  # noqa: E731
    if sorted(map(key, ours["applications"])) != sorted(map(key, ref["applications"])):
        problems.append(f"applications {list(map(key, ours['applications']))} != serve/config.yaml {list(map(key, ref['applications']))}")
    for app in ours["applications"]:
        module, _, attr = app["import_path"].partition(":")
        if not callable(getattr(importlib.import_module(module), attr, None)):
            problems.append(f"{app['import_path']} is not a callable")
        config = Path(app.get("args", {}).get("config", ""))
        if not (ROOT / "configs" / config.name).is_file():
            problems.append(f"args.config {config} names no file in configs/")
    return problems


def check_dockerfile(text: str) -> list[str]:
    """The image installs the project with every non-dev extra, constrained by the lock."""
    problems = []
    declared = set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}
    m = re.search(r'pip install -c requirements/lock\.txt "?\.\[([\w,]+)\]', text)
    if not m:
        return ["no `pip install -c requirements/lock.txt .[extras]` line"]
    installed = set(m.group(1).split(","))
    if installed != declared:
        problems.append(f"extras {sorted(installed)} != pyproject's {sorted(declared)}")
    base = re.search(r"^FROM python:(\d+\.\d+)", text, re.M)
    if not base or not ("3.11" <= base.group(1) < "3.13"):
        problems.append(f"base image python {base.group(1) if base else '?'} outside requires-python")
    if f"ils:{VERSION}" not in text:
        problems.append(f"the build tag ils:{VERSION} is not documented")
    return problems


def check_launcher(doc: dict, cfg) -> list[str]:
    problems = []
    if doc.get("docker", {}).get("image") != IMAGE:
        problems.append(f"docker image {doc.get('docker', {}).get('image')} != {IMAGE}")
    types = doc["available_node_types"]
    if doc.get("head_node_type") not in types:
        problems.append("head_node_type is not a node type")
    for name in ("anatomy", "anomaly", "detect"):
        stage = getattr(cfg.gen, name)
        need = {"CPU": stage.num_cpus, "GPU": stage.num_gpus, **stage.resources}
        if not any(all(t.get("resources", {}).get(k, 0) >= v for k, v in need.items() if v) for t in types.values()):
            problems.append(f"gen.{name} needs {need}: no node type offers it")
    if "aws_secret_access_key" in yaml.safe_dump(doc).lower() or "AKIA" in yaml.safe_dump(doc):
        problems.append("credentials in the launcher file")
    return problems


# ----------------------------------------------------------------------------- tests


def test_every_manifest_kind_is_present():
    kinds = sorted(d["kind"] for d in manifests().values())
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayService"], kinds
    entry = {d["spec"]["entrypoint"].split()[1] for d in manifests().values() if d["kind"] == "RayJob"}
    assert entry == {"gen", "train"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_crd_schema(path):
    assert schema_problems(load(path)) == []


def _raycluster() -> dict:
    return copy.deepcopy(manifests()["raycluster.yaml"])


@pytest.mark.parametrize("breakage", [
    lambda d: d["spec"].__setitem__("workerGroupSpec", d["spec"].pop("workerGroupSpecs")),  # typo'd field
    lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("maxReplicas", "twenty"),  # wrong type
    lambda d: d["spec"]["workerGroupSpecs"][1].pop("groupName"),  # required field
    lambda d: d["spec"]["authOptions"].__setitem__("mode", "password"),  # enum
    lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].__setitem__("cpu", [4]),  # int-or-string
], ids=["unknown-field", "wrong-type", "missing-required", "bad-enum", "not-int-or-string"])
def test_schema_rejects_broken_copies(breakage):
    doc = _raycluster()
    breakage(doc)
    assert schema_problems(doc), "a broken manifest must be rejected"


def test_schema_translation_int_or_string():
    doc = _raycluster()
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 4
    assert schema_problems(doc) == []  # an integer quantity is as valid as "4"


@pytest.mark.parametrize("name", ["rayjob-gen.yaml", "rayjob-train.yaml"])
def test_entrypoints_are_ils_commands(name):
    if name == "rayjob-train.yaml":
        from ils.cli import COMMANDS

        if "train" not in COMMANDS:
            pytest.fail("`ils train` is not a subcommand yet (ils/commands/train.py missing)")
    assert check_entrypoint(manifests()[name]) == []


def test_entrypoint_check_fails_on_broken_copies():
    doc = copy.deepcopy(manifests()["rayjob-gen.yaml"])
    for entry in ("ils gen-it --config /config/cluster.yaml",
                  "python -m ils gen --config /config/cluster.yaml",
                  "ils gen --config /config/nope.yaml",
                  "ils gen --config /etc/cluster.yaml",
                  "ils gen --config /config/cluster.yaml gen.nothing=1",
                  "ils gen --config /config/cluster.yaml --outt gen"):
        doc["spec"]["entrypoint"] = entry
        assert check_entrypoint(doc), entry


def test_resources_match_config_profiles():
    cfg = main_config()
    for stage in ("anatomy", "anomaly", "detect"):
        assert "gpu_node" in getattr(cfg.gen, stage).resources, f"configs/cluster.yaml gen.{stage} lacks gpu_node"
    docs = manifests()
    assert check_gen_resources(docs["raycluster.yaml"]["spec"], cfg) == []
    assert check_train_fits(docs["rayjob-train.yaml"]["spec"]["rayClusterSpec"], cfg) == []
    assert check_serve_fits(docs["rayservice.yaml"]["spec"]["rayClusterConfig"], cfg) == []
    for doc in docs.values():
        for spec in cluster_specs(doc):
            assert check_group_pods(spec) == [], doc["metadata"]["name"]


def test_resource_checks_fail_on_broken_copies():
    cfg = main_config()
    docs = manifests()
    spec = copy.deepcopy(docs["raycluster.yaml"]["spec"])
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    gpu["rayStartParams"]["resources"] = '"{\\"accel\\": 1}"'
    assert check_gen_resources(spec, cfg) and check_group_pods(spec)
    gpu["rayStartParams"]["resources"] = '"{\\"gpu_node\\": 1}"'
    gpu["rayStartParams"]["num-gpus"] = "2"  # pod has one GPU
    assert check_group_pods(spec)
    train = copy.deepcopy(docs["rayjob-train.yaml"]["spec"]["rayClusterSpec"])
    train["workerGroupSpecs"][0]["maxReplicas"] = 1
    assert check_train_fits(train, cfg)
    serve = copy.deepcopy(docs["rayservice.yaml"]["spec"]["rayClusterConfig"])
    serve["workerGroupSpecs"][0]["maxReplicas"] = 2
    assert check_serve_fits(serve, cfg)


def test_images_and_ray_versions_agree():
    for name, doc in manifests().items():
        assert check_images_versions(doc) == [], name
    doc = _raycluster()
    doc["spec"]["rayVersion"] = "2.59.0"
    doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/ils-project/ils:0.0.9"
    assert len(check_images_versions(doc)) == 2


def test_no_credentials_in_files():
    for path in MANIFESTS:
        assert check_no_credentials(load(path), path.read_text()) == [], path.name
    doc = _raycluster()
    c = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    c["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"})
    c.pop("envFrom")
    assert len(check_no_credentials(doc, "AKIAABCDEFGHIJKLMNOP")) == 3
    assert check_no_credentials(_raycluster(), "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY00")


def test_rayservice_matches_serve_config():
    assert check_serve_config(manifests()["rayservice.yaml"]) == []
    doc = copy.deepcopy(manifests()["rayservice.yaml"])
    doc["spec"]["serveConfigV2"] = doc["spec"]["serveConfigV2"].replace("serve.app:app_builder", "serve.app:no_such_builder")
    assert len(check_serve_config(doc)) == 2


def test_dockerfile_installs_what_pyproject_declares():
    text = (ROOT / "Dockerfile").read_text()
    assert check_dockerfile(text) == []
    assert check_dockerfile(text.replace(".[gen,train,serve,detect]", ".[gen,serve]"))
    assert check_dockerfile(text.replace("FROM python:3.11", "FROM python:3.9"))
    assert (ROOT / ".dockerignore").is_file()


def test_launcher_yaml():
    doc = yaml.safe_load(LAUNCHER.read_text())
    cfg = main_config()
    assert check_launcher(doc, cfg) == []
    broken = copy.deepcopy(doc)
    broken["available_node_types"]["gpu"]["resources"].pop("gpu_node")
    broken["docker"]["image"] = "rayproject/ray:latest"
    assert len(check_launcher(broken, cfg)) == 4  # image + three GPU stages
