"""The CT lesion segmentation family (DESIGN.md, family 3): UNet++ over HU slices, 4 classes."""
