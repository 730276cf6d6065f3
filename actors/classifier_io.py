"""Reading and writing classifier directories: Hugging Face checkpoints and the int8
variant (``optimization.json`` + ``quantized.pt``), the out-of-scope rule a registered
classifier is measured and served with, and the pooled output its drift profile projects;
shared by serving and training.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from actors.drift import Profile, profile_of
from actors.out_of_scope import NEEDS_REFERENCE, REFERENCE_FILE, Reference, apply_threshold, in_scope_scores
from cluster.errors import BatonError, ConfigError
from cluster.registry import REF_SCHEME, Manifest, ModelRegistry
from cluster.storage import Storage

INT8 = "dynamic-int8"
MARKER, QUANTIZED_WEIGHTS = "optimization.json", "quantized.pt"
DEFAULT_MAX_LENGTH = 128


def load_classifier(model_dir: str | Path) -> tuple[Any, Any, list[str]]:
    """(tokenizer, model in eval mode, labels in label-id order) from a ``save_pretrained``
    directory or from one written by :func:`quantize` (recognised by its ``optimization.json``)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(model_dir)
    if not directory.is_dir():
        raise BatonError(f"model directory {str(directory)!r} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    marker = _read_marker(directory)
    if not marker:
        model = AutoModelForSequenceClassification.from_pretrained(directory)
    elif marker.get("optimization") == INT8 and isinstance(marker.get("weights"), str):
        model = _load_quantized(directory, marker["weights"])
    else:
        raise BatonError(f"{directory / MARKER}: unknown optimisation {marker!r}; this code loads {INT8!r}")
    model.eval()
    return tokenizer, model, [model.config.id2label[i] for i in range(model.config.num_labels)]


def quantize_linear(model: Any) -> Any:
    """An int8 copy of ``model``: every nn.Linear gets int8 weights and dynamically quantised
    activations; the float model is left unchanged."""
    import torch

    with warnings.catch_warnings():
        # torch deprecates its eager quantisation in favour of torchao, which is not installed
        # here; the API still works in this torch, and saying so on every call helps nobody.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


def _read_marker(directory: Path) -> dict[str, Any]:
    path = directory / MARKER
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise BatonError(f"{path}: not JSON: {error}") from None


def _load_quantized(directory: Path, weights: str) -> Any:
    """Rebuild the int8 modules by quantising a float skeleton of the config, then fill them
    from the saved state: no pickled code is loaded, so ``weights_only`` stays on."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model = quantize_linear(AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(directory)))
    try:
        model.load_state_dict(torch.load(directory / weights, weights_only=True))
    except (OSError, RuntimeError) as error:
        raise BatonError(f"{directory / weights}: cannot load the int8 weights: {error}") from None
    return model


def save_quantized(tokenizer: Any, model: Any, directory: Path) -> None:
    import torch

    tokenizer.save_pretrained(directory)
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / QUANTIZED_WEIGHTS)
    (directory / MARKER).write_text(json.dumps({"optimization": INT8, "weights": QUANTIZED_WEIGHTS}) + "\n", encoding="utf-8")


def predictions(probabilities: np.ndarray, oos_index: int | None, oos_threshold: float | None) -> np.ndarray:
    """Arg-max labels; below ``oos_threshold`` top probability the prediction becomes out-of-scope."""
    return apply_threshold(probabilities.argmax(axis=1), probabilities.max(axis=1), oos_index, oos_threshold or None)


@dataclass(frozen=True)
class OutOfScopeRule:
    """A registered model answers ``label`` when its ``score`` of an input is under ``threshold``:
    the rule its recipe evaluated it with (``evaluation.oos_label``, ``oos_score`` and
    ``oos_threshold``), so what is served matches the metrics in its manifest."""

    label: str
    threshold: float
    score: str = "probability"

    @classmethod
    def of(cls, manifest: Manifest) -> OutOfScopeRule | None:
        return cls.from_evaluation(manifest.recipe.get("evaluation") or {}, manifest.labels)

    @classmethod
    def from_evaluation(cls, evaluation: dict[str, Any], labels: list[str]) -> OutOfScopeRule | None:
        """The rule of a recipe's ``evaluation`` section, or None when it only has the class
        (no threshold, or a top-probability threshold of 0)."""
        label, threshold = evaluation.get("oos_label"), evaluation.get("oos_threshold")
        score = evaluation.get("oos_score") or "probability"
        if label not in labels or threshold is None or (score == "probability" and threshold <= 0):
            return None
        return cls(label, float(threshold), score)


class Outputs(NamedTuple):
    """What one forward pass gives: logits, probabilities, and the pooled encoder output when asked."""

    logits: np.ndarray
    probabilities: np.ndarray
    pooled: np.ndarray | None


class TextClassifier:
    """A loaded classifier as a function: texts -> (n, n_labels) probabilities; ``label_ids``
    applies its out-of-scope rule, if it has one. With a drift ``profile``, ``classify`` also
    gives each input's projection, from the same forward pass."""

    def __init__(
        self, model_dir: str | Path, max_length: int = DEFAULT_MAX_LENGTH, out_of_scope: OutOfScopeRule | None = None,
        profile: Profile | None = None,
    ):
        self.tokenizer, self.model, self.labels = load_classifier(model_dir)
        self.max_length = max_length
        self.out_of_scope = out_of_scope
        self.profile = profile
        if out_of_scope and out_of_scope.label not in self.labels:
            raise ConfigError(f"{model_dir}: out-of-scope label {out_of_scope.label!r} is not a label of the model files")
        self._oos_index = self.labels.index(out_of_scope.label) if out_of_scope else None
        needs_reference = out_of_scope is not None and out_of_scope.score in NEEDS_REFERENCE
        self._reference = Reference.load(Path(model_dir) / REFERENCE_FILE) if needs_reference else None

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.forward(texts).probabilities

    def forward(self, texts: list[str], pooled: bool = False) -> Outputs:
        """The pooled output is the masked mean of the last hidden state: what a drift profile
        projects and the distance scores of an out-of-scope rule compare."""
        import torch

        pooled = pooled or self._reference is not None
        batch = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            output = self.model(**batch, output_hidden_states=pooled)
            logits = output.logits.float()
            pooled_output = mean_pool(output.hidden_states[-1], batch["attention_mask"]).float().numpy() if pooled else None
            return Outputs(logits.numpy(), torch.softmax(logits, dim=-1).numpy(), pooled_output)

    def run(self, texts: list[str], batch_size: int = 256, pooled: bool = True) -> Outputs:
        """:meth:`forward` over many texts, in length-sorted batches (less padding)."""
        order = np.argsort([len(text) for text in texts], kind="stable")
        parts = [
            self.forward([texts[i] for i in order[start : start + batch_size]], pooled=pooled) for start in range(0, len(texts), batch_size)
        ]
        restore = np.argsort(order, kind="stable")
        return Outputs(*(_restore_rows([getattr(part, field) for part in parts], restore) for field in Outputs._fields))

    def fit_reference(self, texts: list[str], labels: list[str], oos_label: str | None) -> Reference:
        """The out-of-scope reference of this model's training rows ``texts`` / ``labels``."""
        label_ids = np.asarray([self.labels.index(label) for label in labels])
        oos_index = self.labels.index(oos_label) if oos_label in self.labels else None
        return Reference.fit(self.run(texts).pooled, label_ids, oos_index)

    def classify(self, texts: list[str]) -> tuple[Outputs, np.ndarray, np.ndarray | None]:
        """(outputs, label ids under the out-of-scope rule, (n, k) projections of the inputs or
        None without a profile)."""
        outputs = self.forward(texts, pooled=self.profile is not None)
        projections = None if self.profile is None else self.profile.project(outputs.pooled)
        return outputs, self.label_ids(outputs), projections

    def label_ids(self, outputs: Outputs) -> np.ndarray:
        predicted = outputs.probabilities.argmax(axis=1)
        rule = self.out_of_scope
        if rule is None:
            return predicted
        scores = in_scope_scores(rule.score, outputs.logits, outputs.pooled, self._reference, self._oos_index)
        return apply_threshold(predicted, scores, self._oos_index, rule.threshold)


def _restore_rows(parts: list[np.ndarray | None], restore: np.ndarray) -> np.ndarray | None:
    """Batches' outputs joined and put back in the callers' row order; None when not computed."""
    return None if parts[0] is None else np.concatenate(parts)[restore]


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Mean of the token vectors that are not padding: (batch, tokens, d) -> (batch, d)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def open_classifier(model: str, storage_uri: str | None = None, max_length: int | None = None) -> TextClassifier:
    """A classifier from a local directory or a ``registry://`` reference. A registered one keeps
    its manifest's out-of-scope rule, its drift profile (if it has one) and, unless ``max_length``
    is given, its training truncation: it is served as it was measured."""
    if not model.startswith(REF_SCHEME):
        return TextClassifier(model, max_length or DEFAULT_MAX_LENGTH)
    registry = ModelRegistry(Storage(storage_uri or os.environ.get("BATON_STORAGE", ".baton")))
    manifest = registry.manifest(*registry.resolve(model))
    trained = (manifest.recipe.get("training") or {}).get("max_length")
    directory = registry.fetch(f"{manifest.name}:{manifest.version}")
    return TextClassifier(directory, max_length or trained or DEFAULT_MAX_LENGTH, OutOfScopeRule.of(manifest), profile_of(manifest))
