"""Built-in validators: score a checkpoint without target labels (and the oracle, which uses them)."""
