"""Architecture (and augmentation) search: the supernet, the straight-through sampler, the
bi-level search loop and the evaluation stage (probe the top-k, retrain the best, test once)."""
