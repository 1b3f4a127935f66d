"""Training, evaluation, conversion and release recipes for groundvlm (`accelerate launch recipes/<m>.py`)."""
