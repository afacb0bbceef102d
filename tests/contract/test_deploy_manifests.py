"""deploy/ — the compose file, the Kubernetes manifests, the Dockerfile — checked at schema level.

No Docker engine and no cluster run here, so these tests read the files as data: every YAML file
parses, every document is a kind we ship with its right apiVersion, and the files agree with the
code they run: each command is a real `caselink` command, each CASELINK_* variable is a real
setting, each selector finds its Deployment, the shipped policy and network files validate.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from schemas.topics import CASE_COMMANDS, CASE_EVENTS, TOPIC_PARTITIONS
from services.cli import build_parser
from services.router.policy import parse_policy
from services.shared.network import parse_network
from services.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

SERVICES = ("intake", "router", "notifier")
# The one-shot commands that prepare the infrastructure, in the order they must run.
SETUP_COMMANDS = (("db", "upgrade"), ("topics", "create"), ("network", "load"))

API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Job": "batch/v1",
    "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
}
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# The topics each consumer-only service reads (services/*/app.py): more replicas than the
# smallest partition count of them would sit idle in the consumer group.
CONSUMED_TOPICS = {"router": (CASE_EVENTS, CASE_COMMANDS), "notifier": (CASE_EVENTS,)}
SECRET_PLACEHOLDER = "CHANGE-ME"


# ---------------------------------------------------------------------------------------------
# Loading


def _yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))


@cache
def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict), "deploy/compose.yaml is a mapping"
    return document


def _compose_services() -> dict[str, dict[str, Any]]:
    services = _compose().get("services")
    assert isinstance(services, dict) and services, "deploy/compose.yaml has services"
    return services


def _is_kustomization(path: Path) -> bool:
    return path.name in {"kustomization.yaml", "kustomization.yml", "Kustomization"}


def _manifest_files() -> list[Path]:
    return [path for path in sorted(K8S.rglob("*.y*ml")) if not _is_kustomization(path)]


@cache
def _manifests() -> tuple[tuple[Path, dict[str, Any]], ...]:
    found = []
    for path in _manifest_files():
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                found.append((path, document))
    return tuple(found)


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc.get("kind") == kind]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(workload)
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def _argv(container: dict[str, Any]) -> list[str]:
    """The `caselink` arguments a container runs: `args` under the image's ENTRYPOINT, or a
    `command` that names caselink itself."""
    command = list(container.get("command") or [])
    if command:
        assert Path(command[0]).name == "caselink", f"{container['name']}: command does not run caselink: {command}"
        return command[1:] + list(container.get("args") or [])
    return list(container.get("args") or [])


def _deployment_for(service: str) -> dict[str, Any]:
    matches = [d for d in _of_kind("Deployment") if _argv(_pod_spec(d)["containers"][0])[:1] == [service]]
    assert len(matches) == 1, f"expected one Deployment running `caselink {service}`, found {len(matches)}"
    return matches[0]


# ---------------------------------------------------------------------------------------------
# What the code defines


@cache
def _setting_names() -> frozenset[str]:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return frozenset(prefix.upper() + name.upper() for name in Settings.model_fields)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_path(argv: list[str]) -> tuple[str, ...]:
    """The subcommand words at the start of argv, e.g. ('network', 'load'); () if none is known."""
    parser, path = build_parser(), []
    for word in argv:
        choices = _subparsers(parser)
        if word not in choices:
            break
        parser, path = choices[word], [*path, word]
    return tuple(path)


def _assert_real_caselink_command(argv: list[str], where: str) -> None:
    assert argv, f"{where}: runs no caselink command"
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `caselink {shlex.join(argv)}` is not a valid caselink command (exit {exc.code})")


def test_the_cli_has_the_commands_the_deployment_relies_on() -> None:
    for argv in (["intake"], ["router"], ["notifier"], ["db", "upgrade"], ["topics", "create"], ["network", "load"]):
        assert _command_path(argv) == tuple(argv), f"`caselink {' '.join(argv)}` is gone from services/cli.py"


# ---------------------------------------------------------------------------------------------
# Every file


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda path: str(path.relative_to(DEPLOY)))
def test_every_yaml_file_in_deploy_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    assert documents, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in documents), f"{path}: every document is a mapping"


def test_the_deploy_directory_ships_compose_manifests_and_a_dockerfile() -> None:
    for path in (COMPOSE, DOCKERFILE, DEPLOY / "network.example.yaml", K8S / "kustomization.yaml"):
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    assert _manifest_files(), "deploy/k8s/ holds no manifest"


def _env_names(environment: Any) -> set[str]:
    """Variable names of a compose `environment` (a mapping or a list of NAME[=value])."""
    if isinstance(environment, dict):
        return set(environment)
    if isinstance(environment, list):
        return {str(item).split("=", 1)[0] for item in environment}
    return set()


def _dockerfile_env_names() -> set[str]:
    names: set[str] = set()
    for instruction in _dockerfile_instructions():
        if instruction[0] == "ENV":
            names |= {match.group(1) for match in re.finditer(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", instruction[1])}
    return names


def _k8s_env_names() -> set[str]:
    names: set[str] = set()
    for kind in ("Deployment", "Job"):
        for workload in _of_kind(kind):
            for container in _containers(workload):
                names |= {entry["name"] for entry in container.get("env") or []}
    for config_map in _of_kind("ConfigMap"):
        if config_map["metadata"]["name"] in _env_from_names("configMapRef"):
            names |= set(config_map.get("data") or {})
    for secret in _of_kind("Secret"):
        if secret["metadata"]["name"] in _env_from_names("secretRef"):
            names |= set(secret.get("stringData") or {}) | set(secret.get("data") or {})
    return names


def test_every_caselink_variable_named_in_deploy_is_a_real_setting() -> None:
    used: dict[str, set[str]] = {"deploy/compose.yaml": set(), "deploy/k8s": _k8s_env_names()}
    for service in _compose_services().values():
        used["deploy/compose.yaml"] |= _env_names(service.get("environment"))
    used["deploy/Dockerfile"] = _dockerfile_env_names()
    for where, names in used.items():
        unknown = sorted(name for name in names if name.startswith("CASELINK_") and name not in _setting_names())
        assert not unknown, f"{where} sets {unknown}, which services/shared/settings.py does not define"


def test_variables_passed_to_caselink_with_env_from_are_all_caselink_settings() -> None:
    # envFrom hands over every key: a key that is no setting is a typo nobody would notice.
    for config_map in _of_kind("ConfigMap"):
        if config_map["metadata"]["name"] in _env_from_names("configMapRef"):
            keys = set(config_map.get("data") or {})
            assert keys <= _setting_names(), f"ConfigMap {config_map['metadata']['name']}: {keys - _setting_names()}"
    for secret in _of_kind("Secret"):
        if secret["metadata"]["name"] in _env_from_names("secretRef"):
            keys = set(secret.get("stringData") or {}) | set(secret.get("data") or {})
            assert keys <= _setting_names(), f"Secret {secret['metadata']['name']}: {keys - _setting_names()}"


# ---------------------------------------------------------------------------------------------
# Compose


def _compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command or []]


def _runs_caselink(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("caselink")


def _replicas(service: dict[str, Any]) -> int:
    return int((service.get("deploy") or {}).get("replicas", 1))


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(str(item).split("=", 1) for item in environment if "=" in str(item))
    return {str(key): str(value) for key, value in environment.items()}


def test_compose_runs_apache_kafka_in_kraft_mode_and_postgresql() -> None:
    services = _compose_services()
    kafka = services.get("kafka")
    assert kafka is not None, "compose has a kafka service"
    assert str(kafka.get("image", "")).startswith("apache/kafka:"), "kafka runs the official apache/kafka image"
    env = _environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "one KRaft node: both roles"
    assert env.get("KAFKA_CONTROLLER_QUORUM_VOTERS"), "KRaft needs its controller quorum voters"
    assert "zookeeper" not in str(kafka).lower()
    postgres = services.get("postgres")
    assert postgres is not None, "compose has a postgres service"
    image = str(postgres.get("image", ""))
    assert image.startswith("postgres:"), "postgres runs the official postgres image"
    major = re.match(r"postgres:(\d+)", image)
    assert major and int(major.group(1)) >= 15, f"PostgreSQL 15 or later, not {image}"
    for name in ("kafka", "postgres"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has a healthcheck"


def test_compose_commands_are_real_caselink_commands() -> None:
    for name, service in _compose_services().items():
        if _runs_caselink(service):
            _assert_real_caselink_command(_compose_command(service), f"compose service {name}")


def test_compose_runs_each_setup_command_once_and_two_replicas_of_each_service() -> None:
    services = _compose_services()
    by_command: dict[tuple[str, ...], list[str]] = {}
    for name, service in services.items():
        if _runs_caselink(service):
            by_command.setdefault(_command_path(_compose_command(service)), []).append(name)
    for command in SETUP_COMMANDS:
        assert len(by_command.get(command, [])) == 1, f"one compose service runs `caselink {' '.join(command)}`"
        (name,) = by_command[command]
        assert services[name].get("restart", "no") == "no", f"{name} is a one-shot job: restart: 'no'"
        assert _replicas(services[name]) == 1
    for service in SERVICES:
        replicas = sum(_replicas(services[name]) for name in by_command.get((service,), []))
        assert replicas >= 2, f"compose runs {replicas} replica(s) of `caselink {service}`, not 2"


def test_compose_depends_on_names_real_services_with_valid_conditions() -> None:
    services = _compose_services()
    for name, service in services.items():
        for target, condition in _depends_on(service).items():
            assert target in services, f"{name} depends on {target}, which compose does not define"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name} -> {target}: unknown condition {condition!r}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target} to be healthy: no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} must be a one-shot to complete"


def _completed_before(services: dict[str, dict[str, Any]], name: str) -> set[str]:
    """Every service that must have completed (transitively) before `name` starts."""
    done: set[str] = set()
    pending = [name]
    while pending:
        for target, condition in _depends_on(services[pending.pop()]).items():
            if condition == "service_completed_successfully" and target not in done:
                done.add(target)
                pending.append(target)
    return done


def test_compose_starts_the_services_only_after_migrations_topics_and_network() -> None:
    services = _compose_services()
    setup = {}
    for name, service in services.items():
        if _runs_caselink(service) and _command_path(_compose_command(service)) in SETUP_COMMANDS:
            setup[_command_path(_compose_command(service))] = name
    assert setup[("db", "upgrade")] in _completed_before(services, setup[("network", "load")]), (
        "the network is loaded after the migrations"
    )
    for name, service in services.items():
        if _runs_caselink(service) and _command_path(_compose_command(service)) in {(s,) for s in SERVICES}:
            missing = set(setup.values()) - _completed_before(services, name)
            assert not missing, f"{name} may start before {sorted(missing)} completed"


def test_compose_points_caselink_at_the_compose_kafka_and_postgres() -> None:
    services = _compose_services()
    kafka_env = _environment(services["kafka"])
    advertised = kafka_env.get("KAFKA_ADVERTISED_LISTENERS", "")
    advertised_hosts = {urlsplit(listener.strip()).netloc for listener in advertised.split(",")}
    for name, service in services.items():
        if not _runs_caselink(service):
            continue
        env = _environment(service)
        for address in env["CASELINK_KAFKA_BOOTSTRAP"].split(","):
            host = address.rsplit(":", 1)[0]
            assert host in services, f"{name}: bootstrap {address} is not a compose service"
            assert address in advertised_hosts, f"{name}: the broker does not advertise {address}"
        url = urlsplit(env["CASELINK_DATABASE_URL"])
        assert url.scheme == "postgresql+asyncpg", f"{name}: CASELINK_DATABASE_URL must be postgresql+asyncpg://"
        assert url.hostname in services, f"{name}: database host {url.hostname} is not a compose service"
        assert env.get("CASELINK_KAFKA_ENABLE_IDEMPOTENCE", "true").lower() == "true", "idempotence on Apache Kafka"


def test_compose_creates_topics_with_no_more_replicas_than_brokers() -> None:
    services = _compose_services()
    brokers = sum(_replicas(s) for s in services.values() if str(s.get("image", "")).startswith("apache/kafka:"))
    for name, service in services.items():
        if _runs_caselink(service) and _command_path(_compose_command(service)) == ("topics", "create"):
            factor = int(_environment(service).get("CASELINK_KAFKA_REPLICATION_FACTOR", "1"))
            assert 1 <= factor <= brokers, f"{name}: replication factor {factor} with {brokers} broker(s)"


def test_compose_intake_listens_on_all_interfaces_with_no_host_port_clash() -> None:
    services = _compose_services()
    for name, service in services.items():
        if not (_runs_caselink(service) and _command_path(_compose_command(service)) == ("intake",)):
            continue
        env = _environment(service)
        assert env.get("CASELINK_HTTP_HOST") == "0.0.0.0", f"{name}: the intake must listen on 0.0.0.0 in a container"
        for port in service.get("ports") or []:
            published = str(port).rsplit(":", 1)[0].rsplit(":", 1)[-1]
            low, _, high = published.partition("-")
            span = int(high or low) - int(low) + 1
            assert span >= _replicas(service), f"{name}: {_replicas(service)} replicas cannot share host port {port}"


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of a service's relative bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and volume.startswith("."):
            source, target = volume.split(":")[:2]
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def test_compose_mounted_network_and_policy_files_exist_and_validate() -> None:
    checked = set()
    for name, service in _compose_services().items():
        mounts = _bind_mounts(service)
        for source in mounts.values():
            assert source.is_file(), f"{name} mounts {source}, which does not exist"
        if not _runs_caselink(service):
            continue
        argv = _compose_command(service)
        if _command_path(argv) == ("network", "load"):
            assert argv[2] in mounts, f"{name} loads {argv[2]}, which is not mounted"
            parse_network(mounts[argv[2]].read_text(encoding="utf-8"))
            checked.add("network")
        if policy := _environment(service).get("CASELINK_POLICY"):
            assert policy in mounts, f"{name}: CASELINK_POLICY={policy} is not mounted"
            parse_policy(mounts[policy].read_text(encoding="utf-8"))
            checked.add("policy")
    assert "network" in checked, "compose loads a network file"


def test_compose_build_uses_the_dockerfile_with_the_repository_as_context() -> None:
    for name, service in _compose_services().items():
        build = service.get("build")
        if build is None:
            continue
        context = (DEPLOY / (build if isinstance(build, str) else build.get("context", "."))).resolve()
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        assert context == ROOT, f"{name}: the build context is the repository root"
        assert dockerfile.resolve() == DOCKERFILE.resolve(), f"{name}: builds {dockerfile}, not deploy/Dockerfile"


# ---------------------------------------------------------------------------------------------
# Kubernetes


def test_every_manifest_has_a_known_kind_with_its_api_version_and_a_name() -> None:
    seen: set[tuple[str, str]] = set()
    for path, doc in _manifests():
        where = str(path.relative_to(DEPLOY))
        kind = doc.get("kind")
        assert kind in API_VERSIONS, f"{where}: kind {kind!r} is not one we ship"
        assert doc.get("apiVersion") == API_VERSIONS[kind], f"{where}: {kind} is {API_VERSIONS[kind]}"
        metadata = doc.get("metadata") or {}
        name = metadata.get("name")
        assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), f"{where}: bad name"
        assert "namespace" not in metadata, f"{where}: {kind}/{name} names a namespace; the manifests do not"
        assert (kind, name) not in seen, f"{where}: a second {kind} named {name}"
        seen.add((kind, name))


def test_kustomization_lists_every_long_running_manifest_but_no_example_or_job() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization.get("resources") or []
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists {resource}, which does not exist"
    top_level = {path.name for path in _manifest_files() if path.parent == K8S}
    examples = {name for name in top_level if name.endswith((".example.yaml", ".example.yml"))}
    assert set(resources) == top_level - examples, (
        f"kustomization.yaml should list exactly {sorted(top_level - examples)}, not {sorted(resources)}"
    )
    # `kubectl apply -k` must never overwrite the real Secret with the shipped placeholders.
    for path, doc in _manifests():
        if doc["kind"] == "Secret":
            assert path.name in examples, f"{path.name}: a Secret with placeholders is a *.example.yaml"
        if doc["kind"] == "Job":
            assert path.parent != K8S, "Jobs stay out of the kustomization (they run before a rollout)"


def test_deployments_run_intake_router_and_notifier_with_two_replicas() -> None:
    assert len(_of_kind("Deployment")) == len(SERVICES)
    for service in SERVICES:
        deployment = _deployment_for(service)
        assert deployment["spec"].get("replicas", 1) >= 2, f"{service}: at least two replicas"


def test_deployment_selectors_match_their_pod_labels() -> None:
    for deployment in _of_kind("Deployment"):
        match = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert match and match.items() <= labels.items(), f"{deployment['metadata']['name']}: selector misses pods"


def test_workload_containers_run_real_caselink_commands_from_one_image() -> None:
    images = set()
    for kind in ("Deployment", "Job"):
        for workload in _of_kind(kind):
            for container in _containers(workload):
                where = f"{kind} {workload['metadata']['name']} container {container['name']}"
                _assert_real_caselink_command(_argv(container), where)
                assert container.get("image"), f"{where}: no image"
                images.add(container["image"])
    assert len(images) == 1, f"every caselink container runs the same image, not {sorted(images)}"
    (image,) = images
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"pin a tag, not {image}"


def test_jobs_run_the_setup_commands() -> None:
    commands = {_command_path(_argv(c)) for job in _of_kind("Job") for c in _pod_spec(job)["containers"]}
    assert set(SETUP_COMMANDS) <= commands, f"Jobs for {sorted(set(SETUP_COMMANDS) - commands)} are missing"
    for job in _of_kind("Job"):
        assert _pod_spec(job).get("restartPolicy") in {"Never", "OnFailure"}, "a Job's pods must not restart Always"


def _port_numbers(container: dict[str, Any]) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for port in container.get("ports") or []:
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


def test_deployments_have_liveness_and_readiness_probes_fit_for_their_service() -> None:
    for service in SERVICES:
        deployment = _deployment_for(service)
        container = _pod_spec(deployment)["containers"][0]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container.get(probe), f"{service}: no {probe}"
        argv = _argv(container)
        if service == "intake":
            ports = _port_numbers(container)
            paths = {}
            for probe in ("livenessProbe", "readinessProbe"):
                http = container[probe].get("httpGet")
                assert http, f"intake: {probe} is an HTTP probe"
                assert http["port"] in ports, f"intake: {probe} port {http['port']} is not a container port"
                paths[probe] = http["path"]
            assert paths == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
            env = {entry["name"]: entry.get("value") for entry in container.get("env") or []}
            assert env.get("CASELINK_HTTP_HOST") == "0.0.0.0", "the intake listens on 0.0.0.0 in a pod"
            assert int(env.get("CASELINK_HTTP_PORT", 8080)) in ports.values(), "the intake listens on its port"
        else:
            assert "--ready-file" in argv, f"{service}: runs with --ready-file for its probes"
            ready_file = argv[argv.index("--ready-file") + 1]
            readiness = container["readinessProbe"].get("exec", {}).get("command")
            assert readiness == ["test", "-f", ready_file], f"{service}: readiness checks its ready file"


def test_pods_run_as_non_root_with_resources_and_a_writable_tmp_only() -> None:
    for kind in ("Deployment", "Job"):
        for workload in _of_kind(kind):
            name = workload["metadata"]["name"]
            spec = _pod_spec(workload)
            pod_security = spec.get("securityContext") or {}
            volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
            for container in _containers(workload):
                where = f"{kind} {name} container {container['name']}"
                security = {**pod_security, **(container.get("securityContext") or {})}
                assert security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
                assert security.get("runAsUser", 1) != 0, f"{where}: runs as uid 0"
                assert security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
                resources = container.get("resources") or {}
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(bound) or {}), f"{where}: {bound} cpu and memory"
                if security.get("readOnlyRootFilesystem"):
                    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
                    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp is an emptyDir"


def _selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    return selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_services_and_disruption_budgets_select_exactly_one_deployment() -> None:
    deployments = _of_kind("Deployment")
    for kind, selector_of in (
        ("Service", lambda doc: doc["spec"]["selector"]),
        ("PodDisruptionBudget", lambda doc: doc["spec"]["selector"]["matchLabels"]),
    ):
        for doc in _of_kind(kind):
            selector = selector_of(doc)
            chosen = [d for d in deployments if selector and _selects(selector, d)]
            assert len(chosen) == 1, f"{kind} {doc['metadata']['name']} selects {len(chosen)} Deployments"
            if kind == "Service":
                container = _pod_spec(chosen[0])["containers"][0]
                for port in doc["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    assert target in _port_numbers(container), f"Service {doc['metadata']['name']}: no port {target}"
            else:
                assert doc["spec"].get("minAvailable", 0) < chosen[0]["spec"]["replicas"], "a PDB must allow drains"
    assert _deployment_for("intake") in [
        d for s in _of_kind("Service") for d in deployments if _selects(s["spec"]["selector"], d)
    ], "a Service fronts the intake"
    budgeted = [
        d
        for p in _of_kind("PodDisruptionBudget")
        for d in deployments
        if _selects(p["spec"]["selector"]["matchLabels"], d)
    ]
    assert all(d in budgeted for d in deployments), "every Deployment has a PodDisruptionBudget"


def test_autoscalers_scale_existing_deployments_within_their_partitions() -> None:
    names = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    scaled = set()
    for hpa in _of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        where = f"HorizontalPodAutoscaler {hpa['metadata']['name']}"
        assert target["kind"] == "Deployment" and target["apiVersion"] == "apps/v1", where
        assert target["name"] in names, f"{where} scales {target['name']}, which is no Deployment"
        low, high = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        assert 2 <= low <= high, f"{where}: 2 <= minReplicas <= maxReplicas"
        assert hpa["spec"].get("metrics"), f"{where}: names its metrics"
        service = _argv(_pod_spec(names[target["name"]])["containers"][0])[0]
        if service in CONSUMED_TOPICS:
            partitions = min(TOPIC_PARTITIONS[topic] for topic in CONSUMED_TOPICS[service])
            assert high <= partitions, f"{where}: more than {partitions} {service}s would sit idle"
        scaled.add(target["name"])
    assert scaled == set(names), f"Deployments without an autoscaler: {sorted(set(names) - scaled)}"


def _env_from_names(ref: str) -> set[str]:
    return {
        source[ref]["name"]
        for kind in ("Deployment", "Job")
        for workload in _of_kind(kind)
        for container in _containers(workload)
        for source in container.get("envFrom") or []
        if ref in source
    }


def test_config_maps_and_secrets_that_pods_use_exist() -> None:
    config_maps = {doc["metadata"]["name"]: doc for doc in _of_kind("ConfigMap")}
    secrets = {doc["metadata"]["name"] for doc in _of_kind("Secret")}
    assert _env_from_names("configMapRef") <= set(config_maps)
    assert _env_from_names("secretRef") <= secrets
    for kind in ("Deployment", "Job"):
        for workload in _of_kind(kind):
            for volume in _pod_spec(workload).get("volumes") or []:
                if "configMap" in volume:
                    config_map = config_maps.get(volume["configMap"]["name"])
                    assert config_map is not None, f"{workload['metadata']['name']}: no ConfigMap {volume['configMap']}"
                    for item in volume["configMap"].get("items") or []:
                        assert item["key"] in config_map["data"], f"ConfigMap has no key {item['key']}"


def _mounted_files(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """path in the container -> text, for files mounted from a shipped ConfigMap."""
    config_maps = {doc["metadata"]["name"]: doc for doc in _of_kind("ConfigMap")}
    volumes = {volume["name"]: volume for volume in _pod_spec(workload).get("volumes") or []}
    files = {}
    for mount in container.get("volumeMounts") or []:
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        data = config_maps[source["name"]]["data"]
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if "subPath" in mount:
                if mount["subPath"] == item["path"]:
                    files[mount["mountPath"]] = data[item["key"]]
            else:
                files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = data[item["key"]]
    return files


def test_the_router_policy_and_the_loaded_network_are_mounted_and_valid() -> None:
    router = _deployment_for("router")
    container = _pod_spec(router)["containers"][0]
    files = _mounted_files(router, container)
    env = {entry["name"]: entry.get("value") for entry in container.get("env") or []}
    policy_path = env.get("CASELINK_POLICY")
    assert policy_path in files, f"CASELINK_POLICY={policy_path} is not a file mounted into the router"
    parse_policy(files[policy_path])
    loads = [
        (job, c)
        for job in _of_kind("Job")
        for c in _pod_spec(job)["containers"]
        if _command_path(_argv(c)) == ("network", "load")
    ]
    for job, container in loads:
        path = _argv(container)[2]
        files = _mounted_files(job, container)
        assert path in files, f"Job {job['metadata']['name']} loads {path}, which is not mounted"
        parse_network(files[path])


def test_configmap_policy_and_network_files_validate() -> None:
    for config_map in _of_kind("ConfigMap"):
        data = config_map.get("data") or {}
        if "policy.yaml" in data:
            parse_policy(data["policy.yaml"])
        if "network.yaml" in data:
            parse_network(data["network.yaml"])
    assert any("policy.yaml" in (c.get("data") or {}) for c in _of_kind("ConfigMap")), "a ConfigMap holds policy.yaml"
    assert any("network.yaml" in (c.get("data") or {}) for c in _of_kind("ConfigMap")), "a ConfigMap holds network.yaml"


def test_production_topics_get_three_replicas() -> None:
    settings = {}
    for config_map in _of_kind("ConfigMap"):
        if config_map["metadata"]["name"] in _env_from_names("configMapRef"):
            settings |= config_map.get("data") or {}
    assert int(settings.get("CASELINK_KAFKA_REPLICATION_FACTOR", 1)) >= 3, "production topics get 3 replicas"
    assert settings.get("CASELINK_KAFKA_ENABLE_IDEMPOTENCE", "true") == "true", "idempotence on Apache Kafka"


def test_shipped_secrets_hold_only_placeholders() -> None:
    secrets = _of_kind("Secret")
    assert secrets, "a Secret carries the database URL, the resident_ref key and the Kafka credentials"
    keys: set[str] = set()
    for secret in secrets:
        assert "data" not in secret, "ship placeholders in stringData, readable as placeholders"
        for key, value in (secret.get("stringData") or {}).items():
            assert SECRET_PLACEHOLDER in str(value), f"Secret {secret['metadata']['name']}.{key} is not a placeholder"
            keys.add(key)
    assert {"CASELINK_DATABASE_URL", "CASELINK_RESIDENT_REF_KEY"} <= keys


def test_example_network_file_validates() -> None:
    parse_network((DEPLOY / "network.example.yaml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def _dockerfile_instructions() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, with continuation lines joined."""
    logical = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        logical += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            instruction, _, arguments = logical.strip().partition(" ")
            yield instruction.upper(), arguments.strip()
            logical = ""


def test_dockerfile_builds_in_stages_and_runs_caselink_as_a_non_root_user() -> None:
    instructions = list(_dockerfile_instructions())
    stages = [index for index, (name, _) in enumerate(instructions) if name == "FROM"]
    assert len(stages) >= 2, "a multi-stage build: a build stage and a runtime stage"
    final = instructions[stages[-1] :]
    users = [arguments for name, arguments in final if name == "USER"]
    assert users, "the runtime stage sets a USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the runtime stage runs as {users[-1]}"
    entrypoints = [arguments for name, arguments in final if name == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["caselink"], "ENTRYPOINT is the caselink command"
    commands = [arguments for name, arguments in final if name == "CMD"]
    if commands:
        _assert_real_caselink_command(yaml.safe_load(commands[-1]), "Dockerfile CMD")
    exposed = {arguments for name, arguments in final if name == "EXPOSE"}
    assert "8080" in exposed, "the image exposes the intake's port"
    numeric_user = re.fullmatch(r"\d+", user)
    for workload in _of_kind("Deployment") + _of_kind("Job"):
        run_as = (_pod_spec(workload).get("securityContext") or {}).get("runAsUser")
        if numeric_user and run_as is not None:
            assert run_as == int(user), f"{workload['metadata']['name']} runs as {run_as}, the image's user is {user}"


def test_dockerfile_copies_only_what_the_dockerignore_lets_through() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for expected in (".git", ".venv", ".caselink", "test-artifacts"):
        assert expected in ignored, f".dockerignore keeps {expected} out of the build context"
    copied = set()
    for name, arguments in _dockerfile_instructions():
        if name == "COPY" and "--from" not in arguments:
            copied |= {
                word.rstrip("/").removeprefix("./") for word in arguments.split()[:-1] if not word.startswith("--")
            }
    assert copied, "the build stage copies the project"
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert source not in ignored, f".dockerignore drops {source}, which the Dockerfile copies"
