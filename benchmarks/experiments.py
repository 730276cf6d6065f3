"""A/B tests read while the data arrive: the false-positive rate of a fixed-horizon test that is
peeked at after every 100 samples per arm, against the always-valid mSPRT (``actors.experiments``),
on simulated A/A streams; and the samples per arm each needs to detect a 0.80 -> 0.82 accuracy lift.

Every reading goes through ``actors.experiments.proportion_test`` / ``welch_test``, the code the
experiment report uses. Seeded; print-only. One core, about two minutes with the defaults.

Run: ``python -m benchmarks.experiments [--runs 2000] [--lift-runs 300] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from actors.experiments import DEFAULT_TAU_SD, Moments, Proportion, proportion_test, welch_test

ALPHA = 0.05
STEP = 100  # samples per arm between readings
HORIZON = 10_000  # samples per arm in an A/A stream
LIFT_HORIZON = 20_000  # samples per arm before a lift run gives up
BASE_RATE, LIFTED_RATE = 0.80, 0.82
# Latency as a log-normal with a long right tail (median 50 ms, mean 57 ms): Welch on skewed data.
LOG_LATENCY_MU, LOG_LATENCY_SIGMA = math.log(50.0), 0.5


def cumulative_proportions(rng: np.random.Generator, rate: float, steps: int) -> np.ndarray:
    """Successes after each reading of one arm."""
    return np.cumsum(rng.binomial(STEP, rate, steps))


def cumulative_moments(rng: np.random.Generator, steps: int) -> list[Moments]:
    """(n, mean, unbiased variance) of one arm's latencies after each reading."""
    samples = rng.lognormal(LOG_LATENCY_MU, LOG_LATENCY_SIGMA, steps * STEP).reshape(steps, STEP)
    sums, squares = np.cumsum(samples.sum(axis=1)), np.cumsum((samples**2).sum(axis=1))
    n = STEP * np.arange(1, steps + 1)
    means = sums / n
    variances = (squares - n * means**2) / (n - 1)
    return [Moments(int(n[k]), float(means[k]), float(variances[k])) for k in range(steps)]


def aa_accuracy_run(rng: np.random.Generator) -> tuple[bool, bool, bool]:
    """One A/A accuracy stream: (fixed test significant at the horizon only, at any reading,
    mSPRT significant at any reading)."""
    steps = HORIZON // STEP
    baseline, candidate = (cumulative_proportions(rng, BASE_RATE, steps) for _ in range(2))
    results = [proportion_test(Proportion(int(b), STEP * (k + 1)), Proportion(int(c), STEP * (k + 1)))
               for k, (b, c) in enumerate(zip(baseline, candidate))]
    return verdicts(results)


def aa_latency_run(rng: np.random.Generator) -> tuple[bool, bool, bool]:
    """The same for the mean of a skewed latency, with Welch's test."""
    steps = HORIZON // STEP
    baseline, candidate = cumulative_moments(rng, steps), cumulative_moments(rng, steps)
    return verdicts([welch_test(b, c) for b, c in zip(baseline, candidate)])


def verdicts(results) -> tuple[bool, bool, bool]:
    return (
        results[-1].p_value_fixed < ALPHA,
        any(r.p_value_fixed < ALPHA for r in results),
        any(r.p_value_sequential < ALPHA for r in results),
    )


def planned_samples() -> int:
    """Samples per arm a fixed-horizon test plans for 80% power on the lift, in whole readings."""
    effect = proportion_effectsize(LIFTED_RATE, BASE_RATE)
    n = NormalIndPower().solve_power(effect_size=effect, alpha=ALPHA, power=0.8, alternative="two-sided")
    return STEP * math.ceil(n / STEP)


def lift_run(rng: np.random.Generator, planned: int, tau_sds: tuple[float, ...]) -> dict[str, float]:
    """One 0.80 -> 0.82 stream: samples per arm at the first significant reading of each test
    (inf when never within LIFT_HORIZON), and whether the fixed test is significant at `planned`."""
    steps = LIFT_HORIZON // STEP
    baseline = cumulative_proportions(rng, BASE_RATE, steps)
    candidate = cumulative_proportions(rng, LIFTED_RATE, steps)
    first = {"peeked": math.inf, **{tau: math.inf for tau in tau_sds}}
    planned_hit = False
    for k in range(steps):
        n = STEP * (k + 1)
        results = {tau: proportion_test(Proportion(int(baseline[k]), n), Proportion(int(candidate[k]), n), tau)
                   for tau in tau_sds}
        fixed_significant = results[tau_sds[0]].p_value_fixed < ALPHA  # the same for every tau
        planned_hit = planned_hit or (n == planned and fixed_significant)
        if fixed_significant:
            first["peeked"] = min(first["peeked"], n)
        for tau, result in results.items():
            if result.p_value_sequential < ALPHA:
                first[tau] = min(first[tau], n)
        if n >= planned and all(value < math.inf for value in first.values()):
            break
    return {**first, "planned": float(planned_hit)}


def share(flags) -> str:
    return f"{100 * np.mean(flags):.1f}%"


def samples_cell(values: np.ndarray, q: float) -> str:
    value = np.quantile(values, q, method="higher")
    return f"> {LIFT_HORIZON:,}" if math.isinf(value) else f"{int(value):,}"


def print_false_positives(accuracy: np.ndarray, latency: np.ndarray, runs: int) -> None:
    print(f"A/A: {runs} streams per metric, {HORIZON:,} samples per arm, read after every {STEP}; "
          f"alpha {ALPHA}, mSPRT tau {DEFAULT_TAU_SD} SD")
    print()
    print("| A/A stream (no effect) | fixed-horizon, read once at 10,000 | fixed-horizon, read after every 100 "
          "| mSPRT, read after every 100 |")
    print("| --- | ---: | ---: | ---: |")
    for name, verdict in (("accuracy 0.80 vs 0.80 (two-proportion z)", accuracy),
                          ("mean latency, log-normal (Welch's t)", latency)):
        print(f"| {name} | {share(verdict[:, 0])} | {share(verdict[:, 1])} | {share(verdict[:, 2])} |")


def print_lift(runs: list[dict], planned: int, tau_sds: tuple[float, ...], accuracy: np.ndarray) -> None:
    print(f"Lift {BASE_RATE:.2f} -> {LIFTED_RATE:.2f}: {len(runs)} streams, read after every {STEP} per arm, "
          f"up to {LIFT_HORIZON:,} per arm; fixed horizon planned for 80% power: {planned:,} per arm")
    print()
    print("| test | samples per arm to detect: median | 80th percentile | detected by 10,000 per arm "
          "| false positives (A/A) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    power = np.mean([run["planned"] for run in runs])
    print(f"| fixed-horizon z, read once at {planned:,} | {planned:,} (planned) | {planned:,} | "
          f"{100 * power:.1f}% (at {planned:,}) | {share(accuracy[:, 0])} |")
    rows = [("fixed-horizon z, read after every 100 (invalid)", "peeked", share(accuracy[:, 1]))]
    rows += [(f"mSPRT, tau {tau} SD, read after every 100", tau,
              share(accuracy[:, 2]) if tau == DEFAULT_TAU_SD else "not run (<= alpha for any tau)") for tau in tau_sds]
    for name, key, false_positives in rows:
        first = np.array([run[key] for run in runs])
        print(f"| {name} | {samples_cell(first, 0.5)} | {samples_cell(first, 0.8)} | {share(first <= HORIZON)} "
              f"| {false_positives} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="A/A streams per metric")
    parser.add_argument("--lift-runs", type=int, default=300, help="0.80 -> 0.82 streams")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started, cpu_started = time.perf_counter(), time.process_time()

    accuracy = np.array([aa_accuracy_run(rng) for _ in range(args.runs)])
    latency = np.array([aa_latency_run(rng) for _ in range(args.runs)])
    print_false_positives(accuracy, latency, args.runs)
    planned = planned_samples()
    tau_sds = (DEFAULT_TAU_SD, 0.05)
    print()
    print_lift([lift_run(rng, planned, tau_sds) for _ in range(args.lift_runs)], planned, tau_sds, accuracy)
    print()
    print(f"{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu_started:.0f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
