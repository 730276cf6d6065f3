"""Reading and writing classifier directories: Hugging Face checkpoints and the int8
variant (``optimization.json`` + ``quantized.pt``), shared by serving and training.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from cluster.errors import BatonError

INT8 = "dynamic-int8"
MARKER, QUANTIZED_WEIGHTS = "optimization.json", "quantized.pt"


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


class TextClassifier:
    """A loaded classifier as a function: texts -> (n, n_labels) probabilities."""

    def __init__(self, model_dir: str | Path, max_length: int = 128):
        self.tokenizer, self.model, self.labels = load_classifier(model_dir)
        self.max_length = max_length

    def __call__(self, texts: list[str]):
        import torch

        batch = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with torch.no_grad():
            return torch.softmax(self.model(**batch).logits, dim=-1).numpy()
