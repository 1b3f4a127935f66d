"""One package per system (PIN, VPGTrans, Groma): its arguments, models, data, training, evaluation and baselines."""
