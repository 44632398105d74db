"""The disc classifier as a bulk-inference predictor: medq's image decoder in the loader
processes, the model's probability of a disc per study."""

from __future__ import annotations

from pathlib import Path

import torch

from medq.common.inference.chunk import StudyPredictor
from medq.common.inference.images import ImageDecoder
from medq.common.inference.outcome import StudyOutcome
from medq.common.training.kit import pick_device
from tests.fourth_family.data import LABELS
from tests.fourth_family.family import DiscSpec
from tests.fourth_family.train import load_classifier


class DiscPredictor(StudyPredictor):
    def __init__(self, checkpoint: Path, batch_size: int, device=None):
        model, saved = load_classifier(checkpoint)
        spec = DiscSpec.from_dict(saved["spec"])
        self.device = torch.device(device) if device is not None else pick_device()
        self.model = model.to(self.device)
        self.decoder = ImageDecoder(spec.image_size)
        self.studies_per_batch = batch_size

    @torch.no_grad()
    def predict(self, study_ids: list[int], batch) -> list[StudyOutcome]:
        images = batch.images.to(self.device).float().div_(255.0)
        p_disc = torch.softmax(self.model(images).float(), dim=1)[:, 1].cpu().tolist()
        return [StudyOutcome(study_id, "done", result={"label": LABELS[int(p > 0.5)], "p_disc": float(p)},
                             image_size=info.size, uids=info.uids, source_format=info.source_format)
                for study_id, p, info in zip(study_ids, p_disc, batch.infos)]

    def close(self) -> None:
        self.model = None
