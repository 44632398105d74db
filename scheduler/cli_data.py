"""`medq data`: synthetic datasets of each built-in family, made from the shape models medq
ships (the chest one from 957 real annotations). Torch-free."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def data() -> None:
    """Make synthetic datasets."""


@data.command("synth-chest")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--n", "n", default=300, show_default=True, help="number of images")
@click.option("--seed", default=1, show_default=True)
@click.option("--size", default=299, show_default=True, help="image side in pixels")
def synth_chest_cmd(out: Path, n: int, seed: int, size: int) -> None:
    """Synthetic chest radiographs with 15 landmarks drawn from the 957 real annotations."""
    from medq.common.families.chest.synth import synth_chest

    synth_chest(out, n=n, seed=seed, size=size)
    click.echo(f"wrote {n} images to {out / 'images'} and {out / 'landmarks.csv'}")


@data.command("synth-ceph")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--n", "n", default=120, show_default=True, help="training images")
@click.option("--n-test", default=None, type=int, help="images in each of Test1Data and Test2Data  [default: n/4]")
@click.option("--seed", default=1, show_default=True)
@click.option("--width", default=480, show_default=True)
@click.option("--height", default=600, show_default=True)
def synth_ceph_cmd(out: Path, n: int, n_test: int | None, seed: int, width: int, height: int) -> None:
    """Synthetic lateral cephalograms in the ISBI 2015 layout (19 landmarks, 0.1 mm/px)."""
    from medq.common.families.ceph.synth import synth_ceph

    summary = synth_ceph(out, n=n, seed=seed, n_test=n_test, width=width, height=height)
    sets = ", ".join(f"{name} {count}" for name, count in summary.sets.items())
    click.echo(f"wrote {sets} images of {width} x {height} px ({summary.spacing_mm} mm/px) to {out}")


@data.command("synth-ct")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--n", "n", default=200, show_default=True, help="slices")
@click.option("--seed", default=1, show_default=True)
@click.option("--size", default=128, show_default=True, help="slice side in pixels")
@click.option("--slices-per-volume", default=10, show_default=True)
def synth_ct_cmd(out: Path, n: int, seed: int, size: int, slices_per_volume: int) -> None:
    """Synthetic CT slices in the MedSeg layout (HU images, one-hot masks of 4 classes)."""
    from medq.common.families.ct_lesions.synth import synth_ct

    summary = synth_ct(out, n=n, seed=seed, size=size, slices_per_volume=slices_per_volume)
    click.echo(f"wrote {n} slices of {size} x {size} px from {summary.n_volumes} volumes "
               f"({summary.slices_with_lesions} with lesions) to {out}")


