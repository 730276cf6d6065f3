"""``baton`` commands for the running platform: up, down, status, serve-config, router eval,
audit and keys. Registered on the root CLI through the ``baton.cli`` entry point.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import track
from rich.table import Table

from cluster import local
from cluster.config import ENVIRONMENT_VAR, OrchestraConfig, resolve_storage_uri, selected_environment
from cluster.errors import BatonError, ConfigError
from cluster.keys import KeyStore, Principal
from cluster.storage import Storage

DEFAULT_CONFIG = Path("configs/orchestra.yaml")
DEV_KEY = Path(".baton/dev-key")
console = Console(stderr=True)
ConfigOption = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Orchestra config file.")
AddressOption = typer.Option(
    None, "--address", envvar=local.ADDRESS_VAR,
    help="An existing Ray cluster (ray://head:10001, http://head:8265 or head:6379) instead of the local head.",
)
EnvOption = typer.Option(
    None, "--env", envvar=ENVIRONMENT_VAR,
    help="Environment overlaid on the orchestra: dev, test, prod (configs/environments/) or an overlay .yaml file.",
)


def _load(config_path: Path, environment: str | None = None) -> OrchestraConfig:
    """The orchestra in the environment given, else $BATON_ENV's, else as written."""
    from serve.builder import load

    return load(config_path, selected_environment(environment), Path.cwd())


def _storage(config: OrchestraConfig) -> Storage:
    return Storage(resolve_storage_uri(config, Path.cwd()))


def _base_url(config: OrchestraConfig, api: str = local.DASHBOARD_URL) -> str:
    """Where the front door answers: the proxy on the head, whose host the API URL names."""
    host = httpx.URL(api).host if config.http.host in ("0.0.0.0", "::") else config.http.host
    scheme = "https" if config.http.tls is not None else "http"
    return f"{scheme}://{host}:{config.http_port()}"


# -- up / down / status -----------------------------------------------------------------


def ensure_dev_key(store: KeyStore, path: Path = DEV_KEY) -> str:
    """Keep a working dev key; BATON_DEV_KEY, if set, is the key."""
    wanted = os.environ.get("BATON_DEV_KEY")
    current = path.read_text().strip() if path.is_file() else None
    key = wanted or current
    if key is None or store.verify(key) is None:
        key, principal = store.create("admin", "dev", key=key)
        _audit_key_created(store.storage, principal, via="baton up")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)
    return key


def _application_state(api: str) -> tuple[str, dict]:
    """(status, deploy args) of the baton application as Serve reports it."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from serve.builder import APP_NAME

    details = ServeSubmissionClient(api).get_serve_details()
    application = details.get("applications", {}).get(APP_NAME) or {}
    args = (application.get("deployed_app_config") or {}).get("args") or {}
    return application.get("status", "NOT_STARTED"), args


def wait_ready(url: str, deployed: dict, timeout_s: float, api: str = local.DASHBOARD_URL) -> None:
    """Wait until Serve runs *this* deployment (not the previous one) and /healthz answers."""
    wanted = deployed["applications"][0]["args"]
    deadline = time.monotonic() + timeout_s
    status = "NOT_STARTED"
    with console.status("deploying ...") as spinner:
        while time.monotonic() < deadline:
            status, running_args = _application_state(api)
            spinner.update(f"application {status.lower()} ...")
            if status == "DEPLOY_FAILED":
                raise BatonError("deployment failed; see `baton status` and the Serve logs in /tmp/ray/session_latest/logs/serve")
            if status == "RUNNING" and running_args == wanted and _healthy(url):
                return
            time.sleep(1)
    raise BatonError(f"not ready within {timeout_s:.0f}s (application {status}); see `baton status` and the Ray dashboard")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def deploy(config_path: Path, environment: str | None = None, address: str | None = None) -> dict:
    """Deploy (or redeploy) the orchestra on the running cluster, as `serve deploy` would,
    pinning each registry alias to its version now; the deploy is audited (admin.deploy).

    On a cluster named by ``address`` (or $RAY_ADDRESS), this checkout is uploaded as the
    application's working directory, as `ray job submit` uploads a job's, and the orchestra
    travels inline, so the cluster needs neither baton installed nor this machine's files.
    """
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from actors.audit import cli_principal, write_operator_action
    from serve.builder import serve_config

    environment = selected_environment(environment)
    config = _load(config_path, environment)
    storage = _storage(config)
    api = local.api_url(address)
    client = ServeSubmissionClient(api)
    working_dir = None
    if local.given_address(address):
        if storage.is_local:
            console.print(f"[yellow]storage {storage.uri} is a local path: every node of the cluster must see it (use s3:// on a real cluster)[/]")
        runtime_env = {"working_dir": str(Path.cwd()), "excludes": local.JOB_EXCLUDES}
        client._upload_working_dir_if_needed(runtime_env)  # what `ray job submit` does: rewrites working_dir to its gcs:// URI
        working_dir = runtime_env["working_dir"]
    deployed = serve_config(config_path, Path.cwd(), working_dir=working_dir, environment=environment)
    _, before = _application_state(api)
    client.deploy_applications(deployed)
    after = deployed["applications"][0]["args"]
    write_operator_action(storage, cli_principal(), "admin.deploy", before=before or None, after=after)
    return deployed


def deploy_and_wait(config_path: Path, environment: str | None, timeout_s: float, address: str | None = None) -> dict:
    """Deploy the orchestra and wait until Serve runs this deploy and /healthz answers."""
    api = local.api_url(address)
    deployed = deploy(config_path, environment, address)
    wait_ready(_base_url(_load(config_path, environment), api), deployed, timeout_s, api)
    return deployed


def up(
    config_path: Path = ConfigOption,
    environment: Optional[str] = EnvOption,
    timeout_s: float = typer.Option(600, "--timeout", help="Seconds to wait for /healthz."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs for the Ray head (default: all)."),
    address: Optional[str] = AddressOption,
) -> None:
    """Start a local Ray head (if none runs) or use the cluster at --address / $RAY_ADDRESS,
    deploy the orchestra, wait for /healthz, write the dev key."""
    from serve.builder import cluster_env

    config = _load(config_path, environment)
    api = local.api_url(address)
    if address is None and not local.dashboard_up():
        console.print("starting a local Ray head ...")
        local.start_head(cluster_env(Path.cwd()), num_cpus)
    elif not local.dashboard_up(api):
        raise BatonError(f"no Ray dashboard answers at {api}: is the cluster up, and its dashboard reachable from here?")
    ensure_dev_key(KeyStore(_storage(config)))
    console.print(f"deploying {config_path} in environment {config.environment} ({len(config.agents)} agents) to {api} ...")
    deploy_and_wait(config_path, environment, timeout_s, address)
    url = _base_url(config, api)
    print(f"baton is up.\n  API:        {url}  (docs: {url}/docs)\n  dashboard:  {api}")
    print(f"  admin key:  {DEV_KEY} (mode 600)")
    print(
        f"\ncurl -s {url}/v1/route -H \"Authorization: Bearer $(cat {DEV_KEY})\" "
        "-H 'Content-Type: application/json' -d '{\"text\": \"I love this product!\"}'"
    )


def down() -> None:
    """Flush the audit log, stop Serve and the local Ray head."""
    if local.dashboard_up():
        import ray
        from ray import serve

        from serve.control import flush_audit

        ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
        try:
            written = flush_audit()
            console.print(f"audit flushed ({written} records)")
            serve.shutdown()
        finally:
            ray.shutdown()
    local.stop_head()
    console.print("baton is down.")


def status(config_path: Path = ConfigOption, address: Optional[str] = AddressOption) -> None:
    """Show the cluster, the Serve application and its deployments."""
    config = _load(config_path)
    api = local.api_url(address)
    if not local.dashboard_up(api):
        print(f"Ray: not running at {api} (start with `baton up`)")
        raise typer.Exit(1)
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(api).get_serve_details()
    table = Table("application", "deployment", "status", "replicas")
    for app_name, app_details in details.get("applications", {}).items():
        for name, deployment in app_details.get("deployments", {}).items():
            table.add_row(app_name, name, deployment["status"], str(len(deployment.get("replicas", []))))
    Console().print(table)
    url = _base_url(config, api)
    print(f"{url}/healthz: {'ok' if _healthy(url) else 'not answering'}")


def serve_config(
    config_path: Path = ConfigOption,
    environment: Optional[str] = EnvOption,
    working_dir: Optional[str] = typer.Option(None, help="runtime_env working_dir URI for a remote cluster."),
) -> None:
    """Print the `serve deploy` config for the orchestra: `baton serve-config --env prod > serve.yaml`."""
    from serve.builder import serve_config as build

    deployed = build(config_path, Path.cwd(), working_dir, selected_environment(environment))
    yaml.safe_dump(deployed, sys.stdout, sort_keys=False)


# -- kubernetes -------------------------------------------------------------------------

k8s_app = typer.Typer(help="KubeRay manifests for running the orchestra on Kubernetes.", no_args_is_help=True)


@k8s_app.command("render")
def k8s_render(
    config_path: Path = ConfigOption,
    environment: Optional[str] = EnvOption,
    out: Path = typer.Option(Path("cluster/k8s"), "--out", "-o", help="Folder the manifests are written to."),
) -> None:
    """Write a RayService (the Serve app), a RayCluster (CPU, GPU and Trainium worker groups,
    autoscaled) and a RayJob (fine-tuning) for the orchestra; settings: its `kubernetes:` section."""
    from serve.k8s import render, write

    config = _load(config_path, environment)
    if not config.storage.startswith("s3://"):
        console.print(
            f"[yellow]warning:[/] storage {config.storage!r} is a path inside each pod, so pods do not share the registry, "
            "audit log or sessions; set `storage: s3://bucket/prefix` (or an environment overlay) for a real cluster"
        )
    for path in write(render(config_path, Path.cwd(), selected_environment(environment)), out):
        print(path)


# -- router eval ------------------------------------------------------------------------

router_app = typer.Typer(help="Evaluate the semantic router offline.", no_args_is_help=True)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}:{number}: not valid JSON: {error.msg}") from None
    return rows


@router_app.command("eval")
def router_eval(
    config_path: Path = typer.Option(..., "--config", "-c", help="Orchestra config whose agents the router knows."),
    data: list[Path] = typer.Option(..., "--data", help="JSON lines with text and label; repeatable."),
    label_field: Optional[str] = typer.Option(
        None, help="Field naming the expected agent (default 'agent'); with --supervisor, a list of agents (default 'agents')."
    ),
    none_label: Optional[str] = typer.Option(None, help="Label value meaning 'no agent' (null always does)."),
    text_field: str = typer.Option("text", help="Field holding the request text."),
    supervisor: Optional[str] = typer.Option(
        None, "--supervisor", help="Evaluate this supervisor's choice of team (router policy): exact-set accuracy, precision, recall."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """In-scope accuracy, out-of-scope recall, in-scope rejection, confusion and latency (and,
    with router.llm, the share of requests that would reach the LLM); with --supervisor, how
    well a supervisor picks its team for requests that need several agents."""
    from actors.router import build_router
    from actors.routing_eval import evaluate_router, evaluate_team, supervisor_chooser
    from serve.builder import pin_models

    label_field = label_field or ("agents" if supervisor else "agent")
    config = _load(config_path)
    storage_uri = resolve_storage_uri(config, Path.cwd())
    config = pin_models(config, storage_uri)
    rows = [row for path in data for row in _read_jsonl(path)]
    for index, row in enumerate(rows):
        if text_field not in row or label_field not in row:
            raise ConfigError(f"row {index + 1}: needs fields {text_field!r} and {label_field!r}, has {sorted(row)}")
    router = build_router(config, storage_uri)
    progress = (lambda it: it) if as_json else (lambda it: track(it, description="routing", console=console))
    try:
        if supervisor is not None:
            choose, team = supervisor_chooser(router, config, supervisor)
            report = evaluate_team(choose, rows, team=team, label_field=label_field, text_field=text_field, progress=progress)
        else:
            report = evaluate_router(
                router, rows, label_field=label_field, none_label=none_label, text_field=text_field,
                progress=progress, llm=_llm_router(config),
            )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if as_json:
        print(json.dumps(report.summary()))
        return
    if supervisor is not None:
        _print_team_report(report, supervisor)
    else:
        _print_report(report, router.agent_names)


def _llm_router(config: OrchestraConfig):
    """The config's LLM router, only to ask whether it would be wanted (it is never called here)."""
    if config.router.llm is None:
        return None
    from actors.routing import LlmRouter

    return LlmRouter(config.router.llm, config.agents, dispatcher=None)


def _print_report(report, agents: list[str]) -> None:
    from actors.routing_eval import NONE

    out = Console()
    summary = report.summary()
    metrics = Table("metric", "value", title="router eval")
    for name in ("n", "in_scope_accuracy", "oos_recall", "in_scope_rejection", "llm_share", "p50_ms", "p95_ms"):
        if name in summary:
            metrics.add_row(name, str(summary[name]))
    out.print(metrics)
    labels = [*agents, NONE]
    confusion = Table("expected \\ routed", *labels, title="confusion")
    for expected in labels:
        if any(report.confusion[(expected, got)] for got in labels):
            confusion.add_row(expected, *(str(report.confusion[(expected, got)] or "") for got in labels))
    out.print(confusion)


def _print_team_report(report, supervisor: str) -> None:
    summary = report.summary()
    metrics = Table("metric", "value", title=f"supervisor {supervisor}")
    for name in ("exact_set_accuracy", "precision", "recall", "n"):
        metrics.add_row(name, str(summary[name]))
    metrics.add_row("p50_ms", str(round(report.p50_ms, 3)))
    Console().print(metrics)


# -- audit ------------------------------------------------------------------------------

audit_app = typer.Typer(help="Read the audit log (Parquet on the storage URI).", no_args_is_help=True)


def _parse_since(value: Optional[str]) -> Optional[datetime]:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since: not an ISO 8601 time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _print_records(records: list[dict], as_json: bool) -> None:
    if as_json:
        for record in records:
            print(json.dumps(record, default=str))
        return
    table = Table("ts", "request_id", "principal", "endpoint", "agent", "version", "routed_by", "status", "ms")
    for r in records:
        table.add_row(
            str(r["ts"])[:23], r["request_id"], str(r["principal"]), r["endpoint"], str(r["agent"]),
            str(r["version"]), str(r["routed_by"]), str(r["status_code"]), f"{r['latency_ms'] or 0:.1f}",
        )
    Console().print(table)


@audit_app.command("tail")
def audit_tail(
    config_path: Path = ConfigOption,
    limit: int = typer.Option(20, "-n", "--limit", min=1, help="How many of the newest records."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per line."),
) -> None:
    """The newest audit records."""
    from actors.audit import read_audit

    _print_records(read_audit(_storage(_load(config_path)), limit=limit), as_json)


@audit_app.command("query")
def audit_query(
    config_path: Path = ConfigOption,
    since: Optional[str] = typer.Option(None, help="ISO 8601 time; records at or after it."),
    agent: Optional[str] = typer.Option(None, help="Only this agent's records."),
    endpoint: Optional[str] = typer.Option(None, help="Only this endpoint or action, e.g. admin.traffic.set."),
    limit: int = typer.Option(100, "-n", "--limit", min=1, help="Most records (the newest)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per line."),
) -> None:
    """Audit records filtered by time, agent and endpoint."""
    from actors.audit import read_audit

    records = read_audit(_storage(_load(config_path)), since=_parse_since(since), agent=agent, endpoint=endpoint, limit=limit)
    _print_records(records, as_json)


# -- keys -------------------------------------------------------------------------------

keys_app = typer.Typer(help="Manage API keys (stored hashed).", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    role: str = typer.Option(..., help="invoke, review or admin"),
    name: str = typer.Option(..., help="Who the key is for."),
    expires: Optional[datetime] = typer.Option(
        None, formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"], help="When the key stops working (2027-01-31 is midnight UTC)."
    ),
    agent: Optional[list[str]] = typer.Option(None, "--agent", help="The only agents the key may use (repeat); default: all."),
    pipeline: Optional[list[str]] = typer.Option(None, "--pipeline", help="The only pipelines the key may run (repeat); default: all."),
    config_path: Path = ConfigOption,
) -> None:
    """Create a key and print it once (audited as admin.keys.create, like POST /v1/admin/keys)."""
    from actors.audit import cli_principal, write_operator_action

    config = _load(config_path)
    storage = _storage(config)
    try:
        unknown = config.unknown_scope(agent, pipeline)
        if unknown:
            raise ValueError(f"agents/pipelines {unknown} are not in {config_path}")
        expires_at = expires.replace(tzinfo=expires.tzinfo or timezone.utc) if expires else None
        if expires_at is not None and expires_at <= datetime.now(timezone.utc):
            raise ValueError(f"--expires {expires_at.isoformat()} is not in the future")
        key, principal = KeyStore(storage).create(role, name, expires_at=expires_at, agents=agent or None, pipelines=pipeline or None)
    except ValueError as error:
        write_operator_action(
            storage, cli_principal(), "admin.keys.create", status=422, error=f"validation_error: {error}",
            extra={"role": role, "name": name},
        )
        raise ConfigError(str(error)) from None
    _audit_key_created(storage, principal)
    print(json.dumps({"key": key, "id": principal.key_id, "role": role, "name": name}))


@keys_app.command("list")
def keys_list(config_path: Path = ConfigOption) -> None:
    """Every key: id, name, role, scope, expiry and revocation (never the key or its hash)."""
    keys = KeyStore(_storage(_load(config_path))).list()
    table = Table("id", "name", "role", "created", "expires", "revoked", "agents", "pipelines")
    for key in keys:
        scope = [", ".join(key[name]) if key[name] else "all" for name in ("agents", "pipelines")]
        table.add_row(key["id"], key["name"], key["role"], key["created_at"][:19], (key["expires_at"] or "never")[:19],
                      (key["revoked_at"] or "")[:19], *scope)
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (key_...), from `baton keys list`."), config_path: Path = ConfigOption) -> None:
    """Revoke a key: every ingress replica refuses it within auth.key_refresh_s (audited as admin.keys.revoke)."""
    from actors.audit import cli_principal, write_operator_action

    storage = _storage(_load(config_path))
    try:
        revoked = KeyStore(storage).revoke(key_id)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    write_operator_action(storage, cli_principal(), "admin.keys.revoke", before=None, after={"id": key_id, "revoked_at": revoked["revoked_at"]})
    print(json.dumps(revoked))


def _audit_key_created(storage: Storage, principal: Principal, **extra: str) -> None:
    """The record POST /v1/admin/keys writes: the key's id, name and role, never the key."""
    from actors.audit import cli_principal, write_operator_action

    after = {"id": principal.key_id, "name": principal.name, "role": principal.role}
    write_operator_action(storage, cli_principal(), "admin.keys.create", before=None, after=after, extra=extra or None)


def register(root: typer.Typer) -> None:
    root.command()(up)
    root.command()(down)
    root.command()(status)
    root.command("serve-config")(serve_config)
    root.add_typer(router_app, name="router")
    root.add_typer(audit_app, name="audit")
    root.add_typer(keys_app, name="keys")
    root.add_typer(k8s_app, name="k8s")

