"""Library of the Groma recipe (`recipes/groma.py`): the three training stages of the paper (§4.2: detection
pretraining, alignment pretraining, instruction finetuning), their data, the toy Groma, and evaluation."""
