"""Logs, metrics, traces and the audit trail, fed by one callback handler per turn; nodes import none of it."""
