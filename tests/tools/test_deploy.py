"""The deployment files: what can be checked without a Docker engine or a Kubernetes cluster.

Every compose, manifest and collector file parses; what they reference (files, modules,
commands, extras, environment variables, collector components, service names) exists; and the
commands the containers run are run here, as written, against servers on loopback: the worker
command (with its bind address moved to a free loopback port), the readiness probe, the
OpenTelemetry configuration of the workers (its spans land in an OTLP receiver of the test),
and the Sentinel configuration (a real sentinel started from it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from tests.support.otlp import OtlpReceiver
from tests.support.servers import Server, free_port, server_binary, unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDES = {
    "sentinel": DEPLOY / "sentinel" / "docker-compose.sentinel.yml",
    "cluster": DEPLOY / "cluster" / "docker-compose.cluster.yml",
}
K8S = DEPLOY / "k8s"
COLLECTOR = DEPLOY / "otel-collector.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
OUR_IMAGE = "restate-redis-worker"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> dict[str, dict[str, Any]]:
    """Kind -> the one manifest of that kind under deploy/k8s."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_all(path):
            if doc.get("kind") != "Kustomization":
                assert doc["kind"] not in found, f"two {doc['kind']} manifests"
                found[doc["kind"]] = doc
    return found


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def our_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run this repository's image."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith(OUR_IMAGE + ":")
    }


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    assert match, "the Dockerfile has no exec-form CMD"
    cmd: list[str] = json.loads(match.group(1))
    return cmd


def python_sources() -> str:
    """Every Python source the images run (the package, the examples, the probe)."""
    files = [*ROOT.joinpath("restate_redis").rglob("*.py"), DEPLOY / "ready.py"]
    files += ROOT.joinpath("examples").rglob("*.py")
    return "\n".join(p.read_text() for p in files)


def require(condition: bool, message: str) -> None:
    """A deliverable of the repository that is missing: a failure in CI, a skip elsewhere."""
    if not condition:
        unavailable(message)


# -- every file parses, references exist ----------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = [COMPOSE, COLLECTOR, *OVERRIDES.values(), *K8S.glob("*.yaml")]
    assert len(files) >= 9
    for path in files:
        docs = load_all(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_compose_stack_has_every_part() -> None:
    compose = load(COMPOSE)
    services = compose["services"]
    assert {"redis", "worker", "ui", "restate", "otel-collector", "jaeger"} <= set(services)
    # Redis persists: append-only file on, data on a named volume
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["worker"]["command"] == dockerfile_cmd()
    # the UI listens off loopback, so it must get a token
    assert "RESTATE_REDIS_UI_TOKEN" in services["ui"]["environment"]
    assert services["ui"]["command"][:2] == ["restate-redis", "ui"]


def test_compose_references_exist() -> None:
    for path in [COMPOSE, *OVERRIDES.values()]:
        compose = load(path)
        for name, svc in compose["services"].items():
            build = svc.get("build")
            if build:
                assert (ROOT / build["context"]).is_dir(), (path, name)
                assert (ROOT / build["context"] / build["dockerfile"]).is_file(), (path, name)
            for volume in svc.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):  # compose resolves ./ from the project directory
                    assert (ROOT / source).exists(), (path, name, source)
            for dep in svc.get("depends_on", []):
                known = set(compose["services"]) | set(load(COMPOSE)["services"])
                assert dep in known, (path, name, dep)


def test_dockerfile_copies_what_exists_and_installs_the_extras_it_runs() -> None:
    text = DOCKERFILE.read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for source in sources:
            if source == "examples":
                require((ROOT / source).is_dir(), "examples/ is missing (the example service)")
            else:
                assert (ROOT / source).exists(), source
    extras_line = re.search(r"pip install '\.\[([a-z,]+)\]'", text)
    assert extras_line
    extras = extras_line.group(1).split(",")
    declared = pyproject()["project"]["optional-dependencies"]
    assert set(extras) <= set(declared)
    installed = " ".join(" ".join(declared[e]) for e in extras)
    # what the container commands run comes from those extras
    assert "hypercorn" in installed  # the worker
    assert "opentelemetry-distro" in installed  # opentelemetry-instrument
    assert "opentelemetry-exporter-otlp-proto-http" in installed  # OTEL_EXPORTER_OTLP_PROTOCOL
    assert "restate-redis[cli]" in installed or "click" in installed  # restate-redis ui


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git"} <= ignored  # the build context stays small
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(), re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert source.split("/")[0] not in ignored, source


def test_commands_of_our_containers_exist() -> None:
    compose = load(COMPOSE)
    scripts = pyproject()["project"]["scripts"]
    commands = [svc["command"] for svc in our_services(compose).values()]
    commands.append(
        manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"]
    )
    commands.append(dockerfile_cmd())
    assert len(commands) >= 4
    for argv in commands:
        if argv[0] == "opentelemetry-instrument":
            argv = argv[1:]
        if argv[0] == "hypercorn":
            module = argv[1].split(":")[0]
            require(
                (ROOT / (module.replace(".", "/") + ".py")).is_file(),
                f"{module} (the example service the worker runs) is not in the repository",
            )
        else:
            assert argv[0] in scripts, argv
            from restate_redis.tools.cli import COMMANDS

            assert argv[1] in COMMANDS, argv
            result = subprocess.run(
                [sys.executable, "-m", "restate_redis.tools.cli", *argv[1:2], "--help"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            require(result.returncode == 0, f"{argv[:2]} --help failed: {result.stderr[-500:]}")
            for option in (a for a in argv[2:] if a.startswith("--")):
                assert option in result.stdout, (argv, option)


def test_environment_variables_are_ones_the_code_reads() -> None:
    import opentelemetry.environment_variables as api_env
    import opentelemetry.sdk.environment_variables as sdk_env

    otel_names = {
        v for m in (api_env, sdk_env) for k, v in vars(m).items() if k.startswith("OTEL_")
    }
    sources = python_sources()
    envs: list[dict[str, Any]] = []
    for path in [COMPOSE, *OVERRIDES.values()]:
        compose = load(path)
        for name, svc in compose["services"].items():
            base = load(COMPOSE)["services"].get(name, {})
            if str(svc.get("image", base.get("image", ""))).startswith(OUR_IMAGE + ":"):
                envs.append(svc.get("environment", {}))
    kinds = manifests()
    envs.append(kinds["ConfigMap"]["data"])
    envs.append(kinds["Secret"]["stringData"])
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    k8s_env = {e["name"]: e.get("value", "") for e in container["env"]}
    envs.append(k8s_env)
    checked = set()
    for env in envs:
        for name in env:
            referenced = any(f"$({name})" in str(v) for v in k8s_env.values())
            if name.startswith("OTEL_"):
                assert name in otel_names, f"{name} is not an OpenTelemetry variable"
            elif not referenced:
                assert f'"{name}"' in sources, f"no code reads {name}"
            checked.add(name)
    assert {"RESTATE_REDIS_URL", "RESTATE_REDIS_NAMESPACE", "OTEL_SERVICE_NAME"} <= checked


def test_collector_pipelines_are_wired() -> None:
    config = load(COLLECTOR)
    service = config["service"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    assert {"traces", "metrics"} <= set(service["pipelines"])
    for name, pipeline in service["pipelines"].items():
        assert pipeline["receivers"] and pipeline["exporters"], name
        for section in used:
            for component in pipeline.get(section, []):
                assert component in config[section], f"{name} uses undefined {component}"
                used[section].add(component)
    for section, names in used.items():
        assert set(config[section]) == names, f"{section} defined but unused"
    for extension in service.get("extensions", []):
        assert extension in config["extensions"]
    assert "otlp/jaeger" in service["pipelines"]["traces"]["exporters"]

    # the hosts and ports line up with the compose services
    compose = load(COMPOSE)["services"]
    jaeger = urlsplit("//" + config["exporters"]["otlp/jaeger"]["endpoint"])
    assert jaeger.hostname in compose and jaeger.port == 4317
    assert compose["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    collector_ports = {
        urlsplit("//" + p["endpoint"]).port: proto
        for proto, p in config["receivers"]["otlp"]["protocols"].items()
    }
    worker_env = compose["worker"]["environment"]
    endpoint = urlsplit(worker_env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "otel-collector" and endpoint.hostname in compose
    protocol = "http" if worker_env["OTEL_EXPORTER_OTLP_PROTOCOL"].startswith("http") else "grpc"
    assert collector_ports[endpoint.port] == protocol
    restate = urlsplit(compose["restate"]["environment"]["RESTATE_TRACING_ENDPOINT"])
    assert restate.hostname == "otel-collector" and collector_ports[restate.port] == "grpc"
    mounted = compose["otel-collector"]["volumes"][0].split(":")
    assert (ROOT / mounted[0]).resolve() == COLLECTOR
    assert compose["otel-collector"]["command"] == [f"--config={mounted[1]}"]


def test_kubernetes_manifests_fit_together() -> None:
    kinds = manifests()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= set(kinds)
    deployment, hpa = kinds["Deployment"], kinds["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert container["command"] == dockerfile_cmd()
    assert container["readinessProbe"]["exec"]["command"] == ["python", "deploy/ready.py"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names[container["livenessProbe"]["httpGet"]["port"]] == 9080
    assert container["command"][-1].endswith(":9080")
    refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert refs == {
        "configMapRef": kinds["ConfigMap"]["metadata"]["name"],
        "secretRef": kinds["Secret"]["metadata"]["name"],
    }
    assert "RESTATE_REDIS_URL" in kinds["Secret"]["stringData"]
    assert "RESTATE_REDIS_URL" not in kinds["ConfigMap"]["data"]  # the password stays secret
    assert container["resources"]["requests"]["cpu"]  # the autoscaler needs it
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a drain can proceed
    kustomization = load(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_documented_urls_are_accepted_by_the_store() -> None:
    from restate_redis import RedisStateStore

    text = (DEPLOY / "README.md").read_text()
    urls = set(re.findall(r"rediss?(?:\+\w+)?://[^\s`'\")]+", text))
    for path in OVERRIDES.values():
        for svc in load(path)["services"].values():
            env = svc.get("environment") if isinstance(svc, dict) else None
            if env and "RESTATE_REDIS_URL" in env:
                urls.add(env["RESTATE_REDIS_URL"])
    assert any(u.startswith("redis+sentinel://") for u in urls)
    assert any(u.startswith("redis+cluster://") for u in urls)
    for url in sorted(urls):
        try:
            store = RedisStateStore.from_url(url)  # builds a client; connects on first use
        except ValueError as exc:
            pytest.fail(f"RedisStateStore.from_url rejects the documented {url!r}: {exc}")
        del store


# -- the container commands, run here -------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RESTATE_REDIS_"))}
    env.update(extra)
    return env


def test_readiness_probe_runs_as_written(redis_server: Server) -> None:
    container = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    argv = container["readinessProbe"]["exec"]["command"]
    argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]

    def probe(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=ROOT, env=base_env(**env), capture_output=True, text=True, timeout=60
        )

    assert probe(RESTATE_REDIS_URL=redis_server.url).returncode == 0
    down = probe(RESTATE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 1 and "not reachable" in down.stderr
    unset = probe()
    assert unset.returncode == 1 and "RESTATE_REDIS_URL is not set" in unset.stderr


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.shutdown()
    receiver.server_close()
    thread.join(10)


def worker_env(redis_server: Server, otlp: OtlpReceiver) -> dict[str, str]:
    """The worker's compose environment, pointed at the servers of this test."""
    env = dict(load(COMPOSE)["services"]["worker"]["environment"])
    env["RESTATE_REDIS_URL"] = redis_server.url
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.url
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "500"
    return base_env(**{k: str(v) for k, v in env.items()})


SESSION_SCRIPT = """
import asyncio, os
from restate_redis import RedisStateStore

async def main():
    store = RedisStateStore.from_url(os.environ["RESTATE_REDIS_URL"])
    async with store.object("Counter", "deployed") as s:
        s.set("count", 1)
    async with store.object("Counter", "deployed", state_preload=False, shared=True) as s:
        assert await s.get("count") == 1
    await store.aclose()

asyncio.run(main())
"""


def test_worker_otel_settings_export_state_spans(redis_server: Server, otlp: OtlpReceiver) -> None:
    """The worker's OTEL_* settings with opentelemetry-instrument: state spans reach OTLP."""
    instrument = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    require(instrument is not None, "opentelemetry-instrument missing: pip install '.[otel]'")
    assert instrument is not None
    result = subprocess.run(
        [instrument, sys.executable, "-c", SESSION_SCRIPT],
        cwd=ROOT,
        env=worker_env(redis_server, otlp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    spans = otlp.spans()
    names = [name for name, _, _ in spans]
    port = redis_server.port
    assert names == [
        "EVALSHA restate_redis.open",
        "EVALSHA restate_redis.commit",
        f"HGET 127.0.0.1:{port}",  # a shared lazy session has no open round trip
    ]
    for _, attrs, resource in spans:
        assert resource["service.name"] == "restate-redis-worker"
        assert attrs["db.system.name"] == "redis"
        assert attrs["restate_redis.object_key"] == "deployed"
    assert {"restate_redis.commits", "restate_redis.load.duration"} <= otlp.metric_names()
    assert redis.Redis(port=port).exists("restate:{Counter:deployed}:state") == 1


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            log.seek(0)
            output = log.read().decode(errors="replace")
            if proc.returncode not in (0, -signal.SIGTERM):
                print(output[-3000:])


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_worker_command_serves_the_example(redis_server: Server, otlp: OtlpReceiver) -> None:
    """The worker container's command, as written but bound to a free loopback port."""
    require(
        (ROOT / "examples" / "service.py").is_file(),
        "examples/service.py (the example service the worker image runs) is missing",
    )
    argv = load(COMPOSE)["services"]["worker"]["command"]
    bind = argv.index("--bind") + 1
    assert argv[bind] == "0.0.0.0:9080"
    port = free_port()
    argv = [*argv[:bind], f"127.0.0.1:{port}", *argv[bind + 1 :]]
    bin_dir = str(Path(sys.executable).parent)
    argv[0] = shutil.which(argv[0], path=bin_dir) or argv[0]
    env = worker_env(redis_server, otlp)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    with running(argv, env) as proc:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the worker exited: {shlex.join(argv)}"
            try:
                status, _ = get(port, "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "the worker did not answer in 60 s"
                time.sleep(0.1)
        assert status == 200
        status, body = get(
            port,
            "/discover",
            {"accept": "application/vnd.restate.endpointmanifest.v3+json"},  # v3: lazy state
        )
        assert status == 200, body[:500]
        manifest = json.loads(body)
        names = {s["name"] for s in manifest["services"]}
        assert "Counter" in names
        counter = next(s for s in manifest["services"] if s["name"] == "Counter")
        assert counter["ty"] == "VIRTUAL_OBJECT"


def test_sentinel_config_runs_a_real_sentinel(redis_server: Server) -> None:
    """deploy/sentinel/sentinel.conf, with its hosts moved to loopback, runs a sentinel that
    watches the primary; the documented sentinel URL form then reaches it."""
    binary = server_binary("redis")
    conf = (DEPLOY / "sentinel" / "sentinel.conf").read_text()
    port = free_port()
    assert "sentinel monitor mymaster redis-primary 6379 2" in conf
    conf = conf.replace("port 26379", f"port {port}\nbind 127.0.0.1")
    conf = conf.replace("redis-primary 6379 2", f"127.0.0.1 {redis_server.port} 1")
    tmp = Path(tempfile.mkdtemp(prefix="rr-sentinel-"))
    (tmp / "sentinel.conf").write_text(conf)
    proc = subprocess.Popen(
        [binary, str(tmp / "sentinel.conf"), "--sentinel", "--dir", str(tmp)],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "the sentinel exited: its config was refused"
            try:
                with redis.Redis(port=port, socket_timeout=1) as c:
                    addr = c.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
                    break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert [a.decode() for a in addr] == ["127.0.0.1", str(redis_server.port)]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
