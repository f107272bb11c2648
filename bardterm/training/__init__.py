"""Training: the fine-tune and scratch-training loop, evaluation, and recipes."""
