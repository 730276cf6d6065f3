"""Training recipes (``configs/train/*.yaml``): data, hyper-parameters, scaling, evaluation
and search space, as pydantic models that reject unknown fields and name bad values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from cluster.config import NAME_PATTERN, Strict, parse_config, read_yaml
from actors.out_of_scope import Score
from train.data import DataSpec


class EarlyStopping(Strict):
    patience: int = Field(2, ge=1, description="Epochs without improvement of the evaluation metric before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Least gain that counts as an improvement.")


class TrainingSettings(Strict):
    epochs: int = Field(3, ge=1, le=100, description="Passes over the training data at most.")
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="Peak AdamW learning rate (linear warm-up and decay).")
    batch_size: int = Field(32, ge=1, le=4096, description="Examples per step per worker.")
    eval_batch_size: int = Field(128, ge=1, description="Examples per evaluation step.")
    max_length: int = Field(64, ge=8, le=512, description="Tokens kept per text; longer texts are truncated.")
    seed: int = Field(0, description="Seed of initialisation, shuffling and dropout: same seed, same metrics.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps spent warming the learning rate up.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Share of each target's probability spread over the other labels (cross-entropy label smoothing)."
    )
    early_stopping: EarlyStopping | None = Field(default_factory=EarlyStopping, description="Stop when the metric stalls; null disables.")


class ScalingSettings(Strict):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel replicas).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL backend.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="Ray resources per worker, e.g. {'CPU': 1} or {'neuron_cores': 1} on Trainium.",
    )
    backend: Literal["auto", "gloo", "nccl", "xla"] = Field(
        "auto", description="Collective backend: auto picks nccl on GPU, xla with neuron_cores, else gloo."
    )

    @model_validator(mode="after")
    def _xla_needs_neuron(self) -> ScalingSettings:
        if self.backend == "xla" and "neuron_cores" not in self.resources_per_worker:
            raise ValueError("backend 'xla' (Trainium) needs resources_per_worker.neuron_cores")
        return self

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        if "neuron_cores" in self.resources_per_worker:
            return "xla"
        return "nccl" if self.use_gpu else "gloo"

    def cpus_per_worker(self) -> float:
        return float(self.resources_per_worker.get("CPU", 1.0))


class EvaluationSettings(Strict):
    metric: Literal["accuracy", "macro_f1", "in_scope_accuracy"] = Field(
        "accuracy", description="Metric that picks the best epoch, trial and champion."
    )
    promote_margin: float = Field(0.0, ge=0, description="How much a candidate must beat the champion by to be promoted.")
    oos_label: str | None = Field(
        None, description="Label meaning out-of-scope: adds in_scope_accuracy and oos_recall to the metrics."
    )
    oos_score: Score = Field(
        "probability",
        description=(
            "What oos_threshold is compared with: the top softmax probability; the energy (log-sum-exp) of the in-scope "
            "logits; minus the Mahalanobis distance of the pooled encoder output to the nearest in-scope class mean; or "
            "its cosine similarity to the k-th nearest in-scope training row. The last two ship statistics of the "
            "training rows with the model (out_of_scope.npz)."
        ),
    )
    oos_threshold: float | None = Field(
        None,
        description=(
            "A prediction whose oos_score is below this counts as out-of-scope; null (or 0 with probability): the "
            "out-of-scope class only. `baton optimize calibrate` chooses it."
        ),
    )

    @model_validator(mode="after")
    def _probability_threshold_in_range(self) -> EvaluationSettings:
        if self.oos_score == "probability" and self.oos_threshold is not None and not 0 <= self.oos_threshold < 1:
            raise ValueError(f"a top-probability oos_threshold must be in [0, 1); got {self.oos_threshold}")
        return self

    def probability_threshold(self) -> float | None:
        """The threshold training evaluates with: only a top-probability one needs nothing but the logits."""
        return self.oos_threshold if self.oos_score == "probability" else None


class SearchDimension(Strict):
    loguniform: tuple[float, float] | None = Field(None, description="Sample log-uniformly between two positive bounds.")
    uniform: tuple[float, float] | None = Field(None, description="Sample uniformly between two bounds.")
    choice: list[Any] | None = Field(None, description="Sample one of these values.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDimension:
        given = [k for k in ("loguniform", "uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of loguniform, uniform, choice; got {given or 'none'}")
        return self


class SearchSettings(Strict):
    num_samples: int = Field(4, ge=1, description="Trials to run (the trial budget).")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Trials at once; default: what the cluster's CPUs fit.")
    space: dict[str, SearchDimension] = Field(..., min_length=1, description="training.<field> -> distribution.")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial gets before it may be stopped.")
    reduction_factor: int = Field(2, ge=2, description="ASHA: keep 1/reduction_factor of trials at each rung.")

    @model_validator(mode="after")
    def _known_fields(self) -> SearchSettings:
        unknown = sorted(set(self.space) - set(TrainingSettings.model_fields) - {"early_stopping"})
        if unknown:
            raise ValueError(f"space names unknown training fields {unknown}; known: {sorted(TrainingSettings.model_fields)}")
        return self


class Recipe(Strict):
    name: str = Field(..., pattern=NAME_PATTERN, description="Registry model name the result is registered under.")
    description: str = Field("", description="What the model is for.")
    task: Literal["sequence-classification"] = Field("sequence-classification", description="What the model learns.")
    base_model: str | None = Field(
        None, description="Hugging Face checkpoint directory or registry://name@alias; default: the packaged MiniLM."
    )
    storage: str = Field(".baton", description="Storage URI for checkpoints and the registry.")
    data: DataSpec = Field(..., description="Where the examples come from and how they are split.")
    training: TrainingSettings = Field(default_factory=TrainingSettings, description="Optimisation.")
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Ray Train workers and resources.")
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings, description="Metrics and the promotion gate.")
    search: SearchSettings | None = Field(None, description="Ray Tune search space and budget (train.tune).")

    @model_validator(mode="after")
    def _oos_metric_needs_label(self) -> Recipe:
        if self.evaluation.metric == "in_scope_accuracy" and self.evaluation.oos_label is None:
            raise ValueError("evaluation.metric in_scope_accuracy needs evaluation.oos_label")
        return self


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a recipe; errors name the field path and value."""
    return parse_config(Recipe, read_yaml(path), str(path))
