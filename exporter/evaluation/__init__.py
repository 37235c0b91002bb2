"""Image-quality figures: Fréchet distances, Inception metrics, sample features, plots."""
