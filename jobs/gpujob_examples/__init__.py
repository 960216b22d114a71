"""Worked examples of a job with its own model, data and training step (see jobs/regression.yaml
and jobs/autoencoder.yaml). gpujob finds this package beside those specs and ships it with the
job to whichever backend runs it."""
