"""The code version baton records in manifests and deploys: the git commit, marked dirty
with a hash of uncommitted changes so any code change yields a new version.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def code_version() -> str:
    sha = (_git("rev-parse", "HEAD") or "").strip()
    if not sha:
        return "unknown"
    diff = _git("diff", "HEAD", "--", "cluster", "actors", "serve", "train") or ""
    return sha if not diff else f"{sha}-dirty-{hashlib.sha256(diff.encode()).hexdigest()[:8]}"
