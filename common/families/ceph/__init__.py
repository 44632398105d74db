"""The cephalometric heatmap family (DESIGN.md, family 2): 19 landmarks in millimetres."""
