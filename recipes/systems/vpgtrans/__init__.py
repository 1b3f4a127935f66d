"""VPGTrans (VPGTrans paper, NeurIPS 2023): transfer a visual prompt generator across LLMs; arguments, models,
data, training, stages, evaluation, the speed-up report and the toy caption VL-LLM (`captioner`)."""
