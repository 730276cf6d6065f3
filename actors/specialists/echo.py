"""Echo: no model; returns the text and its length, for exercising routing and batching."""

from __future__ import annotations

from typing import Any, ClassVar

from actors.specialists.base import Specialist


class EchoSpecialist(Specialist):
    kind: ClassVar[str] = "echo"
    batchable: ClassVar[bool] = True

    def _model_name(self) -> str:
        return "none"

    def _load(self) -> None:
        """Nothing to load."""

    def _predict(self, texts: list[str], options: list[Any]) -> list[dict]:
        return [{"text": text, "chars": len(text)} for text in texts]
