"""The DiT and its sampler: loading, sampling, the embedded default model, the digits data and classifier."""
