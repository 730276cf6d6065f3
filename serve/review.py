"""Ground truth over HTTP (API.md §10): POST /v1/feedback, the review queue under
/v1/admin/review, and /review, the page where a person with a review key labels items.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import HTMLResponse
from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictStr, model_validator

from actors.feedback import MAX_LABEL_CHARS, REQUEST_ID
from cluster.keys import Principal
from serve.schemas import Body

# Agent names are path segments (cluster.storage.validate_segment).
AGENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$"
PAGE = Path(__file__).parent / "static" / "review.html"


# At least one of label, reward, correct, and not null (_some_feedback), in JSON Schema.
SOME_FEEDBACK = {
    "anyOf": [
        {"required": [name], "properties": {name: {"type": kind}}}
        for name, kind in (("label", "string"), ("reward", "number"), ("correct", "boolean"))
    ]
}


class FeedbackBody(Body):
    model_config = ConfigDict(json_schema_extra=SOME_FEEDBACK)

    request_id: StrictStr = Field(
        ..., pattern=REQUEST_ID.pattern, description="The X-Request-ID of the answered request this feedback is about."
    )
    label: StrictStr | None = Field(
        None, min_length=1, max_length=MAX_LABEL_CHARS,
        description="The right label; 'correct' follows from it when the agent answered a label.",
    )
    reward: StrictFloat | None = Field(
        None, allow_inf_nan=False, description="A numeric reward for the answer (any finite number)."
    )
    correct: StrictBool | None = Field(None, description="Whether the answer was right.")

    @model_validator(mode="after")
    def _some_feedback(self) -> FeedbackBody:
        if self.label is None and self.reward is None and self.correct is None:
            raise ValueError("give at least one of label, reward, correct")
        return self


class ReviewAnswerBody(Body):
    label: StrictStr = Field(..., min_length=1, max_length=MAX_LABEL_CHARS, description="The right label for the item.")


class ReviewPort(Protocol):
    """What the routes need from the Gateway; each method raises cluster.errors classes."""

    async def feedback(self, request: Request, body: dict[str, Any], principal: Principal) -> dict[str, Any]:
        """Attach ``body`` ({request_id, label?, reward?, correct?}) to that audited request:
        NotFound for an unknown request, Conflict when it has feedback. Returns the feedback outcome."""
        ...

    async def review_items(self, request: Request, agent: str | None, limit: int, principal: Principal) -> list[dict[str, Any]]:
        """Up to ``limit`` waiting items, oldest first, in API.md §10's item shape."""
        ...

    async def answer_review(self, request: Request, request_id: str, label: str, principal: Principal) -> dict[str, Any]:
        """Label a waiting item (NotFound: not queued; Conflict: answered already), audited as
        ``review.answer``. Returns {request_id, agent, version, label, model_label, answered_at}."""
        ...


def page_headers(page: str) -> dict[str, str]:
    """The page runs only its own inline script and style and talks only to this origin."""
    digests = {
        kind: base64.b64encode(hashlib.sha256(block.encode("utf-8")).digest()).decode()
        for kind, block in (("script", _inline(page, "script")), ("style", _inline(page, "style")))
    }
    policy = (
        f"default-src 'none'; script-src 'sha256-{digests['script']}'; style-src 'sha256-{digests['style']}'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {"Content-Security-Policy": policy, "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


def _inline(page: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    if len(blocks) != 1:
        raise RuntimeError(f"{PAGE} must hold exactly one inline <{tag}> block, found {len(blocks)}")
    return blocks[0]


def review_router(port: ReviewPort, require: Callable[[str], Callable[..., Any]]) -> APIRouter:
    """The feedback and review routes; ``require(role)`` is the app's dependency giving the Principal."""
    router = APIRouter()
    invoke_key = Depends(require("invoke"))
    review_key = Depends(require("review"))
    page = PAGE.read_text(encoding="utf-8")
    headers = page_headers(page)

    @router.post(
        "/v1/feedback", status_code=202, summary="Attach ground truth (label, reward or correct) to an answered request."
    )
    async def feedback(request: Request, body: FeedbackBody, principal: Principal = invoke_key) -> dict:
        await port.feedback(request, body.model_dump(), principal)
        return {"request_id": body.request_id, "accepted": True}

    @router.get("/v1/admin/review", summary="Items waiting for human review, oldest first (role review).")
    async def review_items(
        request: Request,
        agent: str | None = Query(None, pattern=AGENT_PATTERN, description="Only this agent's items."),
        limit: int = Query(50, ge=1, le=200, description="Most items to return."),
        principal: Principal = review_key,
    ) -> dict:
        return {"items": await port.review_items(request, agent, limit, principal)}

    @router.post("/v1/admin/review/{request_id}", summary="Answer a review item with the right label (role review).")
    async def answer_review(
        request: Request,
        body: ReviewAnswerBody,
        request_id: str = FastApiPath(..., pattern=REQUEST_ID.pattern, description="The item's request id."),
        principal: Principal = review_key,
    ) -> dict:
        return await port.answer_review(request, request_id, body.label, principal)

    @router.get("/review", include_in_schema=False)
    async def review_page() -> HTMLResponse:
        # The page holds no data: everything it shows comes from the key-checked endpoints above.
        return HTMLResponse(page, headers=headers)

    return router
