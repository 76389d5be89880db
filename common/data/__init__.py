"""The data: where a dataset comes from, its files checked, its seeded split, and the loaders that feed training."""
