"""Classes of the MedSeg COVID-19 CT layout, in its channel order, and the HU conventions."""

from __future__ import annotations

from medq.common import subjects

CLASSES = ("ground_glass", "consolidation", "other_lung", "background")
N_CLASSES = len(CLASSES)
GROUND_GLASS, CONSOLIDATION, OTHER_LUNG, BACKGROUND = range(N_CLASSES)
LESIONS = (GROUND_GLASS, CONSOLIDATION)  # reported apart from lung and background
HU_CLIP = (-1500.0, 500.0)
LESION_CLASSES = tuple(CLASSES[c] for c in LESIONS)  # ("ground_glass", "consolidation")
UNTRAINED = subjects.UNTRAINED_SET  # the evaluation set of the model before training, beside "test"
