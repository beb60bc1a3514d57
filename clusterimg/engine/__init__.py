"""Running the work: feature extraction over worker processes, candidate search, cached pair scoring."""
