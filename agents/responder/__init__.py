"""The Responder: guarded remediation, approvals, audit."""
