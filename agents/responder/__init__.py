"""The Responder: guarded remediation, approvals, audit."""

__all__: list[str] = []
