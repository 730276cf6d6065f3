"""train.tune without a cluster: how many trials run at once."""

from __future__ import annotations

import pytest

from train.recipe import Recipe
from train.tune import concurrency


def recipe(workers: int, cpus: float, samples: int = 8, max_concurrent: int | None = None) -> Recipe:
    return Recipe.model_validate({
        "name": "t",
        "data": {"train": "unused.jsonl"},
        "scaling": {"num_workers": workers, "resources_per_worker": {"CPU": cpus}},
        "search": {"num_samples": samples, "max_concurrent_trials": max_concurrent, "space": {"learning_rate": {"choice": [1e-4]}}},
    })


@pytest.mark.parametrize(
    "workers, cpus, samples, cluster_cpus, expected",
    [(1, 1, 8, 2, 2), (2, 1, 8, 2, 1), (1, 2, 8, 2, 1), (1, 1, 3, 16, 3), (2, 4, 8, 2, 1), (1, 0.5, 8, 2, 4)],
)
def test_concurrency_fits_the_workers_on_the_cluster(workers, cpus, samples, cluster_cpus, expected):
    assert concurrency(recipe(workers, cpus, samples), cluster_cpus) == expected


def test_explicit_concurrency_wins():
    assert concurrency(recipe(1, 1, max_concurrent=5), 2) == 5

