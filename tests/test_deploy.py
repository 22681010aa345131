"""deploy/: every manifest parses and carries what its kind needs, and what it runs is real.

Commands in the manifests are parsed with setpipe's own CLI parser and the job files they
name are loaded with the overrides they pass; the Serve config is validated with Ray's
schema, its import_path imported and its app built against a real (sqlite) registry.
"""

from __future__ import annotations

import shlex
from importlib import import_module
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from croniter import croniter

from setpipe.cli import build_parser
from setpipe.errors import ServeError
from setpipe.spec import load_job

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"
IMAGE_FILE = DEPLOY / "Dockerfile"


def _docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), path
    return docs


def _kind(path: Path, kind: str) -> dict[str, Any]:
    found = [d for d in _docs(path) if d["kind"] == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    containers = pod_template["spec"]["containers"]
    assert containers, "a pod template without containers"
    return containers


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _setpipe_args(argv: list[str]):
    """argv of a `setpipe ...` command, parsed by setpipe's own CLI (SystemExit if invalid)."""
    assert argv[0] == "setpipe", argv
    return build_parser().parse_args(argv[1:])


# --------------------------------------------------------------------------- every file


def test_the_deployments_exist() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    assert {
        "README.md",
        "Dockerfile",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/raycronjob.yaml",
        "kuberay/cronjob.yaml",
        "mlflow/docker-compose.yaml",
        "serve/serve_config.yaml",
    } <= names


@pytest.mark.parametrize("path", sorted(KUBERAY.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_have_identity(path: Path) -> None:
    for doc in _docs(path):
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], doc
        assert isinstance(doc.get("kind"), str) and doc["kind"], doc
        assert isinstance(doc["metadata"]["name"], str) and doc["metadata"]["name"], doc
        if doc["kind"] in ("RayCluster", "RayJob", "RayCronJob"):
            assert doc["apiVersion"] == "ray.io/v1"


# --------------------------------------------------------------------------- Ray clusters


def _check_cluster_spec(spec: dict[str, Any], secret: str) -> None:
    """A GPU worker group, Ray of setpipe's pin, token auth from ``secret`` everywhere."""
    assert spec["rayVersion"] == version("ray")
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head
    pods = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if any(
            int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
            for c in _containers(g["template"])
        )
    ]
    assert gpu_groups, "no worker group with an nvidia.com/gpu limit"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod in pods:
        for container in _containers(pod):
            env = _env(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (secret, "auth_token"), container["name"]
            assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http"), container["name"]


def test_raycluster_has_gpu_workers_and_token_auth(tmp_path: Path) -> None:
    path = KUBERAY / "raycluster.yaml"
    secret = _kind(path, "Secret")
    assert "auth_token" in secret["stringData"]
    cluster = _kind(path, "RayCluster")
    _check_cluster_spec(cluster["spec"], secret["metadata"]["name"])
    # Serve's HAProxy ingress, as `setpipe serve` sets it up for a local Ray.
    from setpipe.serve.ingress import local_ray_environment

    local = local_ray_environment("haproxy", "0.0.0.0", state_dir=str(tmp_path))
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        env = _env(group["template"]["spec"]["containers"][0])
        for key in (
            "RAY_SERVE_ENABLE_HA_PROXY",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED",
            "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE",
        ):
            assert env[key]["value"] == local[key], key
    # Every volume claim the pods mount is defined beside them.
    claims = {d["metadata"]["name"] for d in _docs(path) if d["kind"] == "PersistentVolumeClaim"}
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    used = {v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]}
    assert used and used <= claims


def _check_run_job(spec: dict[str, Any]) -> None:
    """A RayJob spec: its entrypoint is a valid `setpipe run` of a job in jobs/, mounted."""
    _check_cluster_spec(spec["rayClusterSpec"], "setpipe-ray-token")
    argv = shlex.split(spec["entrypoint"])
    args = _setpipe_args(argv)
    assert args.command == "run"
    job_path = PurePosixPath(args.job)
    # The head mounts the ConfigMap (made from the repository's jobs/) where the job is read.
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volume = mounts[str(job_path.parent)]
    config_maps = {v["name"]: v["configMap"]["name"] for v in head["volumes"] if "configMap" in v}
    assert config_maps[volume] == "setpipe-jobs"
    # The job is the repository's file, valid with the entrypoint's overrides and workdir.
    overrides = [*args.overrides, f"workdir={args.workdir}"]
    job = load_job(REPO / "jobs" / job_path.name, overrides)
    assert job.workdir == "/mnt/setpipe"
    gpu_workers = sum(
        g["replicas"]
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    assert job.train.use_gpu and job.train.workers <= gpu_workers
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    assert _env(submitter)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == (
        "setpipe-ray-token"
    )


def test_rayjob_runs_a_repository_job_on_its_own_cluster() -> None:
    rayjob = _kind(KUBERAY / "rayjob.yaml", "RayJob")
    _check_run_job(rayjob["spec"])
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True


def test_raycronjob_schedules_the_rayjob() -> None:
    spec = _kind(KUBERAY / "raycronjob.yaml", "RayCronJob")["spec"]
    assert croniter.is_valid(spec["schedule"])
    # KubeRay 1.6's RayCronJob: jobTemplate IS a RayJob spec, and there is no concurrency
    # policy field (one would be pruned by the API server; the scheduler provides it).
    assert set(spec) <= {"schedule", "jobTemplate", "suspend", "timeZone"}
    _check_run_job(spec["jobTemplate"])
    job = load_job(REPO / "jobs" / "qg_jets.yaml")
    assert job.schedule is not None and spec["schedule"] == job.schedule.cron


def test_cronjob_runs_one_scheduler_pass_at_a_time() -> None:
    cron = _kind(KUBERAY / "cronjob.yaml", "CronJob")
    assert cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert croniter.is_valid(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["setpipe", "schedule"] and "--once" in command
    args = _setpipe_args(command)
    assert args.once and args.address.startswith("http://")
    # The head Service KubeRay makes for raycluster.yaml's cluster.
    cluster = _kind(KUBERAY / "raycluster.yaml", "RayCluster")["metadata"]["name"]
    assert args.address.startswith(f"http://{cluster}-head-svc:8265")
    # jobs/ resolves to the ConfigMap; scheduler.db to the persistent volume.
    jobs_dir = PurePosixPath(container["workingDir"]) / args.jobs_dir
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(jobs_dir)]]["configMap"]["name"] == "setpipe-jobs"
    work = [p for p in mounts if str(PurePosixPath(args.workdir)).startswith(p)]
    assert work and "persistentVolumeClaim" in volumes[mounts[work[0]]]
    assert _env(container)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == (
        "setpipe-ray-token"
    )


# --------------------------------------------------------------------------- MLflow


def test_mlflow_compose_binds_loopback_with_postgres_and_s3() -> None:
    compose = yaml.safe_load((DEPLOY / "mlflow" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"mlflow", "postgres", "minio"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is not loopback"
    for name in ("mlflow", "postgres", "minio"):
        assert services[name]["healthcheck"]["test"], name
    command = " ".join(services["mlflow"]["command"])
    assert "--serve-artifacts" in command
    assert "--artifacts-destination s3://" in command
    assert '--backend-store-uri "postgresql://' in command
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    # The server's MLflow is the one setpipe's client pins.
    assert f"mlflow=={version('mlflow')}" in services["mlflow"]["build"]["dockerfile_inline"]


# --------------------------------------------------------------------------- Serve


def _serve_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "serve" / "serve_config.yaml").read_text())


def test_serve_config_is_a_valid_ray_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    from setpipe.serve.app import APP_NAME, app_config

    config = _serve_config()
    ServeDeploySchema.parse_obj(config)  # Ray's own validation of the file
    (app,) = config["applications"]
    assert app["name"] == APP_NAME
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(import_module(module), attr)
    assert callable(builder)
    serve_config, pinned = app_config(app["args"])
    assert (serve_config.name, serve_config.alias, pinned) == ("qg_jets", "champion", None)
    assert serve_config.autoscale == (2, 8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_uri": "runs:/abc/model"}, "is not a registered model URI"),
        ({"replica": 2}, "args.replica: Extra inputs are not permitted"),
        ({"name": "other"}, "args.name: set by model_uri"),
        ({"limits": {"max_sets": 0}}, "args.limits.max_sets"),
    ],
)
def test_serve_config_args_errors_name_the_field(change: dict, message: str) -> None:
    from setpipe.serve.app import app_config

    (app,) = _serve_config()["applications"]
    with pytest.raises(ServeError, match=message):
        app_config({**app["args"], **change})


def test_serve_app_builder_resolves_the_alias(tmp_path: Path) -> None:
    """The builder as `serve deploy` calls it, against a real registry with a moved alias."""
    from mlflow import MlflowClient

    from setpipe.serve.app import app_builder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("qg_jets")
    for _ in range(2):
        client.create_model_version("qg_jets", source=str(tmp_path))
    client.set_registered_model_alias("qg_jets", "champion", "2")
    (app,) = _serve_config()["applications"]
    built = app_builder({**app["args"], "tracking_uri": uri})
    deployment = built._bound_deployment  # what serve.run / serve deploy would start
    assert deployment.name == "SetModelServer"
    assert deployment._deployment_config.user_config == {"version": "2"}
    assert deployment._deployment_config.autoscaling_config.max_replicas == 8


# --------------------------------------------------------------------------- image


def test_image_matches_the_pins() -> None:
    text = IMAGE_FILE.read_text()
    assert f"rayproject/ray:{version('ray')}-py311-gpu" in text
    assert f"torch=={version('torch').split('+')[0]}" in text
    # Every setpipe container runs the image this checkout builds, tagged with its version.
    for path in KUBERAY.glob("*.yaml"):
        images = {
            line.split("image:")[1].split("#")[0].strip()
            for line in path.read_text().splitlines()
            if "image:" in line
        }
        assert images == {f"ghcr.io/example/setpipe:{version('setpipe')}"}, path.name
