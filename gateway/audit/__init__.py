"""The audit trail: what happened, who did it, kept append-only."""
