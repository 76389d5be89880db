"""Training: what every engine shares at a run's start and end, the plain loop, resume points, head-only training."""
