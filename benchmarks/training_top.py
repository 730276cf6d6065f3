"""Where a Ray Train epoch's CPU goes: one plain-loop epoch, then one 1-worker Ray Train epoch,
with `top` sampled 25 s into each (written to /tmp/top_plain.txt and /tmp/top_ray1.txt).

    python -m benchmarks.training_top
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from benchmarks.training import plain_loop, ray_train, recipe


def main() -> None:
    import ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ray.init(num_cpus=2, log_to_driver=False)
    base = recipe(3000, tempfile.mkdtemp(prefix="baton-bench-"))
    for name, epoch in (("plain", lambda: plain_loop(base, 2)), ("ray1", lambda: ray_train(base, 1)[0])):
        top = subprocess.Popen(f"sleep 25; top -b -d 15 -n 2 -w 200 > /tmp/top_{name}.txt", shell=True)
        print(f"{name}: {epoch():.1f} samples/s; top in /tmp/top_{name}.txt")
        top.wait()
    ray.shutdown()


if __name__ == "__main__":
    main()
