"""The training loop and pre-emption."""
