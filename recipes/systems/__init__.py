"""One package per system (PIN, VPGTrans): its arguments, models, data, training, evaluation and baselines."""
