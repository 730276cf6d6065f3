"""Turns an orchestra config into a Serve application (one deployment per agent version
behind the ingress) and into the equivalent ``serve deploy`` config file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from actors.specialists.registry import SPECIALISTS, validate_params
from cluster.config import (
    OVERLAY_SUFFIXES,
    AgentSettings,
    OrchestraConfig,
    ResourceSettings,
    RouterSettings,
    VersionSettings,
    config_dict,
    load_orchestra,
    resolve_storage_uri,
)
from cluster.errors import ConfigError, NotFound
from cluster.registry import ModelRegistry, parse_ref
from cluster.storage import ROOT_ENV, Storage
from cluster.version import code_version
from serve.agent import AgentVersion, deployment_name
from serve.ingress import Ingress
from serve.proxy import CALLBACK_ENV

logger = logging.getLogger(__name__)
APP_NAME = "baton"
INGRESS = "Ingress"
RUNTIME_ENV_VARS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def load(path: str | Path, environment: str | None = None, base_dir: str | Path | None = None) -> OrchestraConfig:
    """Load an orchestra (with an environment's overlay) and check every agent's kind and
    params against the specialists."""
    config = load_orchestra(path, known_kinds=SPECIALISTS, check_params=validate_params, environment=environment, base_dir=base_dir)
    for agent in config.agents:
        if agent.routable and not agent.composite and any(SPECIALISTS[agent.version_kind(v)].reads_documents for v in agent.versions):
            raise ConfigError(f"{path}: agent {agent.name!r} reads documents, so the router cannot send it text: set routable: false")
    return config


def rescale(weights: list[int]) -> list[int]:
    """Weights scaled to sum to 100 (largest remainder); all-zero weights split evenly."""
    base = weights if sum(weights) else [1] * len(weights)
    exact = [100 * w / sum(base) for w in base]
    scaled = [int(x) for x in exact]
    for index in sorted(range(len(exact)), key=lambda i: scaled[i] - exact[i])[: 100 - sum(scaled)]:
        scaled[index] += 1
    return scaled


def pin_models(config: OrchestraConfig, storage_uri: str) -> OrchestraConfig:
    """Resolve each version's registry alias to a fixed version (what gets deployed), and
    drop versions whose model is missing when they allow it, re-spreading their weight.

    An orchestra with ``require_approval`` serves only versions approved for its environment:
    any other fails the deploy, whatever ``if_missing`` says (that covers missing models only).
    """
    registry = ModelRegistry(Storage(storage_uri))
    agents = []
    for agent in config.agents:
        versions = []
        for version in agent.versions:
            if version.model is None or not version.model.startswith("registry://"):
                versions.append(version)
                continue
            try:
                name, number = registry.resolve(version.model)
            except NotFound:
                if version.if_missing == "fail":
                    raise ConfigError(f"agent {agent.name!r} {version.version}: model {version.model} is not in the registry at {storage_uri}") from None
                logger.warning("agent %s %s: %s not in the registry; skipped", agent.name, version.version, version.model)
                continue
            versions.append(version.model_copy(update={"model": f"registry://{name}:{number}"}))
        if versions:
            weights = rescale([v.weight for v in versions])
            agents.append(agent.model_copy(update={"versions": [v.model_copy(update={"weight": w}) for v, w in zip(versions, weights)]}))
    names = {a.name for a in agents}
    router = config.router
    if router.fallback_agent not in names:
        router = router.model_copy(update={"fallback_agent": None})
    pinned = config.model_copy(update={"agents": agents, "router": pin_router_classifier(router, registry)})
    if config.require_approval:
        _require_approved(pinned, registry)
    return pinned


def pinned_models(config: OrchestraConfig) -> dict[str, str]:
    """Where each registry model of a pinned config is served -> ``registry://name:version``."""
    models = {
        f"{agent.name}/{version.version}": version.model
        for agent in config.agents
        for version in agent.versions
        if version.model is not None and version.model.startswith("registry://")
    }
    classifier = config.router.classifier
    if classifier is not None and classifier.model.startswith("registry://"):
        models["router.classifier"] = classifier.model
    return models


def _require_approved(config: OrchestraConfig, registry: ModelRegistry) -> None:
    """Raise one ConfigError listing every pinned registry model not approved for the environment."""
    environment = config.environment
    refused = []
    for where, ref in pinned_models(config).items():
        name, number, _ = parse_ref(ref)
        if not registry.is_approved(name, number, environment):
            refused.append(f"  {where}: {name}:{number} (approve it: baton models approve {name}:{number} --env {environment})")
    if refused:
        listed = "\n".join(refused)
        raise ConfigError(f"environment {environment!r} requires approval, and these model versions are not approved for it:\n{listed}")


def pin_router_classifier(router: RouterSettings, registry: ModelRegistry) -> RouterSettings:
    classifier = router.classifier
    if classifier is None or not classifier.model.startswith("registry://"):
        return router
    try:
        name, number = registry.resolve(classifier.model)
    except NotFound:
        if classifier.if_missing == "fail":
            raise ConfigError(f"router.classifier.model {classifier.model} is not in the registry") from None
        logger.warning("router classifier %s not in the registry; routing on similarity alone", classifier.model)
        return router.model_copy(update={"classifier": None})
    return router.model_copy(update={"classifier": classifier.model_copy(update={"model": f"registry://{name}:{number}"})})


def _actor_options(resources: ResourceSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.custom:
        options["resources"] = dict(resources.custom)
    return options


def version_options(version: VersionSettings) -> dict[str, Any]:
    options = {
        "autoscaling_config": version.autoscaling.model_dump(exclude_none=True),
        "max_ongoing_requests": version.max_ongoing_requests,
        "max_queued_requests": version.max_queued_requests,
        "ray_actor_options": _actor_options(version.resources),
    }
    if version.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = version.max_replicas_per_node
    return options


def ingress_options(config: OrchestraConfig) -> dict[str, Any]:
    return {
        "autoscaling_config": config.ingress.autoscaling.model_dump(exclude_none=True),
        "max_ongoing_requests": config.ingress.max_ongoing_requests,
        # Requests beyond the replicas' slots wait in the Serve proxy: bounded, answered 503
        # with Retry-After when full (serve/proxy.py gives that answer API.md's error shape).
        "max_queued_requests": config.ingress.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": config.ingress.retry_after_s},
        "ray_actor_options": _actor_options(config.ingress.resources),
    }


def specialist_params(config: OrchestraConfig, agent: AgentSettings, version: VersionSettings, storage_uri: str) -> dict[str, Any]:
    """A version's params plus the orchestra settings its specialist kind takes."""
    params = version.specialist_params(storage_uri)
    specialist = SPECIALISTS[agent.version_kind(version)]
    if specialist.uses_storage:
        params.setdefault("storage", storage_uri)
    if specialist.reads_documents:
        params.setdefault("limits", config.limits.documents.model_dump())
    return params


def deployment_version(*parts: Any) -> str:
    """A deployment's version from the code and its constructor's arguments. On a redeploy,
    Serve keeps the replicas of a deployment whose version is unchanged (new options are
    applied to them in place) and replaces the rest; without a version, every deploy through
    the Python API (a rollout's candidate, a test's app) replaces every replica."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _version_names(deployments: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Agents' version names: what a fingerprint keeps of the handles or bound deployments passed
    to a constructor (their identity in memory differs on every build)."""
    return {name: sorted(versions) for name, versions in deployments.items()}


def bind_agent_version(
    config: OrchestraConfig, agent: AgentSettings, version: VersionSettings, storage_uri: str,
    peers: dict[str, dict[str, Any]], code: str,
) -> Application:
    """One agent version's deployment; ``peers`` are the handles (or bound deployments) of the
    agents it uses, by name and version."""
    peer_traffic = {name: {"weights": {v.version: v.weight for v in config.agent(name).versions}, "sticky": False} for name in peers}
    args = (
        agent.name, version.version, agent.version_kind(version), specialist_params(config, agent, version, storage_uri),
        version.resources.torch_threads, version.batching.model_dump(),
    )
    tag = deployment_version(code, *args, _version_names(peers), peer_traffic)
    options = {"name": deployment_name(agent.name, version.version), "version": tag, **version_options(version)}
    return AgentVersion.options(**options, _internal=True).bind(*args, peers, peer_traffic)


def build_application(config: OrchestraConfig, storage_uri: str) -> Application:
    config = pin_models(config, storage_uri)
    code = code_version()
    served = [a for a in config.agents if not a.composite]
    agents: dict[str, dict[str, Application]] = {}
    # Agents that others use are bound first, so their handles can be passed in (config
    # validation keeps ``uses`` one level deep).
    for agent in sorted(served, key=lambda a: bool(a.uses)):
        peers = {name: agents[name] for name in agent.uses if name in agents}
        agents[agent.name] = {v.version: bind_agent_version(config, agent, v, storage_uri, peers, code) for v in agent.versions}
    settings = config_dict(config)
    tag = deployment_version(code, settings, storage_uri, _version_names(agents))
    return Ingress.options(name=INGRESS, version=tag, _internal=True, **ingress_options(config)).bind(settings, storage_uri, agents)


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: ``import_path: serve.builder:build_app`` with
    ``args: {config: <orchestra.yaml>, base_dir: <repo root>, environment: <env or overlay file>}``,
    or with ``args: {orchestra: <the loaded orchestra>}`` from a deploy that uploaded its code.
    """
    if "orchestra" in args:
        config = OrchestraConfig.model_validate(args["orchestra"])
        return build_application(config, resolve_storage_uri(config, Path(args.get("base_dir") or ".")))
    config_path = Path(args["config"])
    base_dir = Path(args.get("base_dir") or config_path.resolve().parent.parent)
    config = load(config_path, args.get("environment"), base_dir)
    return build_application(config, resolve_storage_uri(config, base_dir))


def _app_args(config: OrchestraConfig, config_path: str | Path, base_dir: str | Path, environment: str | None) -> dict[str, Any]:
    """build_app's args: what to load, and what identifies this deploy of a pinned ``config``."""
    args: dict[str, Any] = {"config": str(Path(config_path).resolve()), "base_dir": str(Path(base_dir).resolve())}
    if environment is not None:
        # An overlay given as a file goes as an absolute path, since Serve builds elsewhere.
        args["environment"] = str(Path(environment).resolve()) if environment.endswith(OVERLAY_SUFFIXES) else environment
    # A new code version, or a moved alias (another model version to serve), changes the
    # args, so Serve rebuilds the app and restarts the replicas.
    args["code_version"] = code_version()
    args["models"] = pinned_models(config)
    # So does an edited orchestra (a limit, a param, an agent): Serve rebuilds an application only
    # when its args change, and would otherwise go on serving the old settings.
    args["orchestra_sha256"] = hashlib.sha256(config.model_dump_json().encode()).hexdigest()
    return args


def _inline_args(config: OrchestraConfig, base_dir: str | Path) -> dict[str, Any]:
    """build_app's args for a cluster that runs an uploaded copy of this checkout: the orchestra
    itself (overlay applied, models pinned, storage resolved here), since the cluster has none
    of this machine's paths."""
    storage = resolve_storage_uri(config, base_dir)
    return {"orchestra": config.model_copy(update={"storage": storage}).model_dump(mode="json"), "code_version": code_version()}


def _image_args(config_path: str | Path, base_dir: str | Path, environment: str | None, image_root: str) -> dict[str, Any]:
    """build_app's args inside an image whose repository lies at ``image_root``."""
    def in_image(path: str | Path) -> str:
        relative = Path(path).resolve().relative_to(Path(base_dir).resolve())
        return f"{image_root.rstrip('/')}/{relative.as_posix()}"

    args: dict[str, Any] = {"config": in_image(config_path), "base_dir": image_root}
    if environment is not None:
        args["environment"] = in_image(environment) if environment.endswith(OVERLAY_SUFFIXES) else environment
    return args


def http_options(config: OrchestraConfig, base_dir: str | Path) -> dict[str, Any]:
    """Serve's ``http_options`` for the orchestra: where the proxy listens and, with
    ``http.tls``, the certificate files it serves HTTPS with (checked to exist here, so a
    wrong path fails the deploy, not the proxy)."""
    options: dict[str, Any] = {"host": config.http.host, "port": config.http_port(), "request_timeout_s": config.http.request_timeout_s}
    tls = config.http.tls
    if tls is None:
        return options
    for field in ("certfile", "keyfile", "ca_certs"):
        value = getattr(tls, field)
        if value is None:
            continue
        path = (Path(base_dir) / value).resolve()
        if not path.is_file():
            raise ConfigError(f"http.tls.{field}: no file at {path}")
        options[f"ssl_{field}"] = str(path)
    if tls.keyfile_password_env is not None:
        password = os.environ.get(tls.keyfile_password_env)
        if password is None:
            raise ConfigError(f"http.tls.keyfile_password_env: the variable {tls.keyfile_password_env} is not set")
        options["ssl_keyfile_password"] = password
    return options


def serve_config(
    config_path: str | Path,
    base_dir: str | Path,
    working_dir: str | None = None,
    environment: str | None = None,
    image_root: str | None = None,
) -> dict[str, Any]:
    """The ``serve deploy`` file for an orchestra in an environment: same deployments, options
    spelled out. With ``working_dir`` (the URI of this checkout uploaded to the cluster), the
    orchestra travels inline. With ``image_root`` (where the repository lies in a container
    image), paths point there and the deploy is not pinned to this checkout's commit and
    registry aliases: the image carries the code, and the cluster resolves aliases on its own
    storage."""
    config = load(config_path, environment, base_dir)
    if image_root is None:
        config = pin_models(config, resolve_storage_uri(config, base_dir))
    deployments = [{"name": INGRESS, **ingress_options(config)}]
    for agent in (a for a in config.agents if not a.composite):
        for version in agent.versions:
            deployments.append({"name": deployment_name(agent.name, version.version), **version_options(version)})
    runtime_env: dict[str, Any] = {"env_vars": dict(RUNTIME_ENV_VARS)}
    if image_root is not None:
        app_args = _image_args(config_path, base_dir, environment, image_root)
    elif working_dir:
        runtime_env["working_dir"] = working_dir
        app_args = _inline_args(config, base_dir)
    else:
        app_args = _app_args(config, config_path, base_dir, environment)
    return {
        "proxy_location": "HeadOnly",
        "http_options": http_options(config, base_dir),
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "serve.builder:build_app",
                "args": app_args,
                "runtime_env": runtime_env,
                "deployments": deployments,
            }
        ],
    }


def cluster_env(root: str | Path | None = None) -> dict[str, str]:
    """Environment the Ray head needs for baton: offline models, the proxy middleware and,
    for a local head, the repository root that relative paths in jobs resolve against.
    """
    env = {**RUNTIME_ENV_VARS, **CALLBACK_ENV}
    if root is not None:
        env[ROOT_ENV] = str(Path(root).resolve())
    return env
