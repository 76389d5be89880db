"""Results: the run record, metrics from its predictions, comparisons across runs, the sentences and the figures."""
