"""Losses, schedules, sampling, the training loop and checkpoints."""
