"""`make bench`: hub rows measured against bare baselines in the same run."""
