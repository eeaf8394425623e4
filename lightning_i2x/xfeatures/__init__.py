"""XNN's x-features: a few faithful concepts per class from a sparse reconstruction autoencoder."""
