"""The Ray cluster baton talks to: the local head that ``make up`` / ``baton up`` starts (start,
stop, probe it), or an existing cluster named by ``--address`` or ``RAY_ADDRESS``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

DASHBOARD_URL = "http://127.0.0.1:8265"
ADDRESS_VAR = "RAY_ADDRESS"
# What a job's working directory (the repository) leaves behind when it is uploaded.
JOB_EXCLUDES = [".venv", ".baton", ".baton-test", ".git", "__pycache__", "build", "*.pt", "*.safetensors"]


def given_address(address: str | None = None) -> str | None:
    """The cluster named by ``--address``, else by ``$RAY_ADDRESS``; None means the local head."""
    return address or os.environ.get(ADDRESS_VAR) or None


def api_url(address: str | None = None) -> str:
    """The dashboard (jobs and Serve REST API) URL of the cluster at ``address``: an http(s)
    URL as given, a Ray Client ``ray://`` address or a GCS ``host:port`` asked for it."""
    address = given_address(address)
    if address is None:
        return DASHBOARD_URL
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    from ray.dashboard.utils import ray_address_to_api_server_url, ray_client_address_to_api_server_url

    from cluster.errors import BatonError

    try:
        if address.startswith("ray://"):
            return ray_client_address_to_api_server_url(address)
        return ray_address_to_api_server_url(address)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise BatonError(f"no Ray cluster answers at {address}: {error}") from None


def run_job(entrypoint: str, env_vars: dict[str, str], follow: bool, address: str | None = None) -> str:
    """Submit ``entrypoint`` as a Ray job of the cluster (the local head, or ``address``), with
    the repository as its working directory, and return its id; with ``follow``, stream its
    logs and fail unless it succeeds."""
    import asyncio
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    from cluster.errors import BatonError

    url = api_url(address)
    client = JobSubmissionClient(url)
    job = submit(client, entrypoint=entrypoint, runtime_env={"working_dir": ".", "excludes": JOB_EXCLUDES, "env_vars": env_vars})
    print(f"submitted {job} to {url} (follow: ray job logs --address {url} -f {job})", file=sys.stderr)
    if not follow:
        return job

    async def stream() -> None:
        async for lines in client.tail_job_logs(job):
            print(lines, end="", flush=True)

    asyncio.run(stream())
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(1)
    if status != JobStatus.SUCCEEDED:
        raise BatonError(f"job {job} ended {status.value}")
    return job


def submit(client, attempts: int = 30, **job) -> str:
    """``client.submit_job(**job)``, tried again for a while when the head answers that no
    agent can take a job yet: a node that has just joined or lost a peer says so for a few
    seconds."""
    import time

    for _ in range(attempts - 1):
        try:
            return client.submit_job(**job)
        except RuntimeError as error:
            if "No available agent" not in str(error):
                raise
        time.sleep(1)
    return client.submit_job(**job)


def ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def dashboard_up(url: str = DASHBOARD_URL) -> bool:
    try:
        # 401 counts: a head with token auth answers, it just wants the token.
        return httpx.get(f"{url}/api/version", timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def start_head(env: dict[str, str], num_cpus: int | None = None) -> None:
    """Start a Ray head with the dashboard on 127.0.0.1:8265; workers inherit ``env``."""
    command = [ray_cli(), "start", "--head", "--dashboard-host=127.0.0.1", "--dashboard-port=8265", "--disable-usage-stats"]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    # Jobs run `python -m ...`: put this environment's interpreter first on the head's PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full_env = {**os.environ, **env, "PATH": path}
    # Token auth (RAY_AUTH_MODE=token) needs ~/.ray/auth_token; make one on first use.
    subprocess.run([ray_cli(), "get-auth-token", "--generate"], env=full_env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(command, env=full_env, check=True, stdout=subprocess.DEVNULL)


def stop_head() -> None:
    subprocess.run([ray_cli(), "stop", "--force"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
