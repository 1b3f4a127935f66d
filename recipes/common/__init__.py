"""What every recipe shares: argument parsing, the run directory, crash-safe checkpoints, provenance."""
