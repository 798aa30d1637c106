"""Methods: the inversion methods (a registry), the shared sampler and the per-step training loop."""
