"""The 19 landmarks of the ISBI 2015 cephalometric challenge, and its folder layout.

Lateral cephalograms face the image right; x to the right, y down, pixels of the original.
"""

from __future__ import annotations

from medq.common import subjects

LANDMARKS = (
    "Sella", "Nasion", "Orbitale", "Porion", "Subspinale", "Supramentale", "Pogonion", "Menton",
    "Gnathion", "Gonion", "Lower incisal incision", "Upper incisal incision", "Upper lip", "Lower lip",
    "Subnasale", "Soft tissue pogonion", "Posterior nasal spine", "Anterior nasal spine", "Articulare",
)
N_LANDMARKS = len(LANDMARKS)
(SELLA, NASION, ORBITALE, PORION, SUBSPINALE, SUPRAMENTALE, POGONION, MENTON, GNATHION, GONION, LOWER_INCISOR,
 UPPER_INCISOR, UPPER_LIP, LOWER_LIP, SUBNASALE, SOFT_POGONION, PNS, ANS, ARTICULARE) = range(N_LANDMARKS)

# Standard cephalometric distances a landmark SR reports (in mm, when the image has a spacing).
SR_DISTANCES: tuple[tuple[int, int], ...] = (
    (SELLA, NASION),  # anterior cranial base length (S-N)
    (NASION, MENTON),  # anterior face height (N-Me)
    (ANS, MENTON),  # lower anterior face height (ANS-Me)
    (SELLA, GONION),  # posterior face height (S-Go)
    (ANS, PNS),  # palatal length (ANS-PNS)
    (ARTICULARE, GONION),  # ramus height (Ar-Go)
    (GONION, MENTON),  # mandibular body length (Go-Me)
)

ISBI_SPACING_MM = 0.1  # every ISBI 2015 image: 1935 x 2400 px at 0.1 mm/px
ISBI_IMAGE_DIR = "RawImage"
ISBI_ANNOTATION_DIR = "AnnotationsByMD"
ISBI_ANNOTATORS = {"senior": "400_senior", "junior": "400_junior"}
ISBI_TRAIN = "TrainingData"
ISBI_TESTS = ("Test1Data", "Test2Data")
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")

# the evaluation set of the model before training, beside the test split ("test") and extra test sets
UNTRAINED = subjects.UNTRAINED_SET  # the evaluation set of the model before training, beside "test"
