"""Using a trained model: reload and predict, prove the reload, trust the answer, show it, explain it, export it."""
