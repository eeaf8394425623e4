"""A GLANCE-inspired causal twin surrogate over measured context (Morpho-MNIST measures)."""
