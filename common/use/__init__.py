"""Using a trained model: reload and predict, prove it is the one trained, show answers, explain them, export it."""
