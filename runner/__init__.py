"""gpujob: run PyTorch training jobs from YAML specs."""
