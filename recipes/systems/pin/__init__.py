"""PIN (Positional Insert; PIN paper, CVPR 2024): the recipe's arguments, models, data, training and evaluation."""
