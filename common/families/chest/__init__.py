"""Family 1: chest landmark regression (ResNet-18 + regression head, seed ensembles)."""
