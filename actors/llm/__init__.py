"""LLM providers behind one shape: a ``ChatRequest`` in; ``Chunk``s, then one ``Finish``, out.
Each provider module is imported only when an agent opens it, so none loads torch or boto3 it does not use."""

from actors.llm.chat import ChatRequest, Finish, Provider, Transient, with_retries

__all__ = ["ChatRequest", "Finish", "Provider", "Transient", "with_retries"]
