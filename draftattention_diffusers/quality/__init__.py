"""Quality lab: attention-fidelity metrics, synthetic video attention, and capture/analysis of real pipelines."""
