"""The disc family, tied to medq's Family interface: what a fourth family has to write."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from medq.common import subjects
from medq.common.errors import SpecError
from medq.common.families.base import (
    Column, Example, Family, MemberCheckpoint, MemberMetric, ResultSection, ResultTable, Row, Trained,
)


@dataclass(frozen=True)
class DiscSpec:
    kind: ClassVar[str] = "disc"

    epochs: int = 3
    batch_size: int = 8
    lr: float = 0.01
    image_size: int = 32
    split_seed: int = 42
    flaky_reads: int = 0  # the first N attempts of a member hit an I/O fault (EIO) reading the data: a test's fault

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise SpecError(f"epochs must be a positive integer, got {self.epochs!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiscSpec":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SpecError(f"unknown DiscSpec field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


class DiscFamily(Family):
    kind = "disc"
    title = "disc classifier"
    member_metric = MemberMetric("val_score", "val accuracy", 3)
    engine_modules = ("tests.fourth_family.train",)
    inference_ref = "tests.fourth_family.infer:INFERENCE"

    def spec_from_dict(self, data: dict[str, Any]) -> DiscSpec:
        return DiscSpec.from_dict(data)

    def plan(self, spec: DiscSpec, data_dir: Path, **options: Any) -> dict[str, Any]:
        from tests.fourth_family.data import read_labels

        rows = read_labels(data_dir)
        stems = [stem for stem, _ in rows]
        order = np.random.default_rng(spec.split_seed).permutation(len(stems))
        n_val = n_test = max(2, len(stems) // 5)
        picked = [stems[k] for k in order]
        return {"data_dir": str(Path(data_dir).resolve()), "n_images": len(rows), "labels": rows,
                "split": {"val": picked[:n_val], "test": picked[n_val:n_val + n_test],
                          "train": picked[n_val + n_test:]}}

    def train(self, spec: DiscSpec, plan: dict[str, Any], seed: int, workdir: Path, hooks) -> Trained:
        from tests.fourth_family.train import train

        done = train(spec, plan, seed, workdir, hooks)
        fields = {"epoch": done["epoch"], "device": done.get("device")}
        return Trained(done["cancelled"], fields, {"best": done["best"], "last": done["last"]}, done["resumed"])

    def evaluate(self, spec: DiscSpec, plan: dict[str, Any], members: Sequence[MemberCheckpoint]) -> dict[str, dict]:
        import torch

        from tests.fourth_family.data import load_images
        from tests.fourth_family.train import evaluate_model, load_classifier

        labels = dict(map(tuple, plan["labels"]))
        stems = plan["split"]["test"]
        images = torch.from_numpy(load_images(Path(plan["data_dir"]), stems, spec.image_size))
        targets = torch.tensor([labels[s] for s in stems])
        results = {}
        for member in members:
            model, _ = load_classifier(member.best)
            loss, accuracy = evaluate_model(model, images, targets, torch.device("cpu"))
            results[subjects.member(member.seed)] = {"accuracy": accuracy, "loss": loss, "n_images": len(stems)}
        return results


    def result_sections(self, results: dict[str, Any]) -> list[ResultSection]:
        rows = tuple(Row((f"seed {m['seed']}", m["state"], (m["metrics"] or {}).get("accuracy")))
                     for m in results["members"])
        return [ResultSection(ResultTable(f"job {results['job_id']}: {results['state']} (test split)",
                                          (Column("model", numeric=False), Column("state", numeric=False, state=True),
                                           Column("accuracy", 3)), rows))]

    def example(self, folder: Path) -> Example:
        import shutil

        from tests.fourth_family.data import make_discs

        data = make_discs(Path(folder) / "discs", n=20, seed=1)
        archive = Path(folder) / "disc-archive"
        archive.mkdir(parents=True, exist_ok=True)
        for image in sorted((data / "images").glob("*.png"))[:2]:
            shutil.copy(image, archive / image.name)
        return Example(DiscSpec(epochs=2), data, archive)


FAMILY = DiscFamily()
