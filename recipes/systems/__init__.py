"""Per-system recipe library code (`recipes/<system>.py` are the thin entry scripts)."""
