"""`medq submit` (training, inference and report jobs). Never imports torch: every job is
validated and planned here, then runs on the workers."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medq.common.families.chest.spec import LANDMARK_BACKBONES, LANDMARK_LOSSES
from medq.common.families.ct_lesions.spec import SEG_ARCHS
from medq.common.settings import load_settings
from medq.scheduler.cli_sharing import placement_options, project_option
from medq.scheduler.cli_support import (
    announce, complete_job, current_store, print_infer_summary, resume_and_announce, wait_and_report,
)


# -- submit ----------------------------------------------------------------------------------
@click.group()
def submit() -> None:
    """Submit a job. The new job id is printed alone on the first line."""


@submit.command("train")
@click.argument("kind")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="the family's dataset")
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="a JSON file of spec fields (the family's defaults for the rest)")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="one spec field (VALUE read as JSON when it parses, else as text); repeatable")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1), help="members (seeds 0..N-1)")
@placement_options
@click.option("--wait", is_flag=True, help="follow progress and print the results")
def submit_train_cmd(kind, data_dir, spec_file, overrides, seeds, placement, wait) -> None:
    """A training job of any registered model family, by its job KIND (an unknown one lists the
    valid ones), its spec given as JSON fields. Plug-in families (MEDQ_FAMILIES) are submitted
    this way; the built-in ones also have commands of their own with an option per field.

    \b
    Examples:
      medq submit train ensemble --data data/chest --set epochs=10 --set loss=wing --seeds 3
      medq submit train mylab.family --data /data/x --spec spec.json --wait
    """
    import json

    from medq.common.families.registry import family
    from medq.scheduler.submit import submit_training

    trained = family(kind)
    fields = json.loads(spec_file.read_text()) if spec_file else {}
    if not isinstance(fields, dict):
        raise click.BadParameter("expected a JSON object of spec fields", param_hint="--spec")
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected FIELD=VALUE, got {item!r}", param_hint="--set")
        try:
            fields[name] = json.loads(text)
        except ValueError:
            fields[name] = text
    spec = trained.spec_from_dict(fields)
    announce(submit_training(load_settings(), kind, spec, data_dir, list(range(seeds)), placement), wait)


@submit.command("ensemble")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="folder with landmarks.csv and images/")
@click.option("--seeds", default=5, show_default=True, help="number of members (seeds 0..N-1)")
@click.option("--epochs-head", default=5, show_default=True, help="phase 1: frozen backbone")
@click.option("--epochs", default=40, show_default=True, help="phase 2: all layers")
@click.option("--loss", type=click.Choice(LANDMARK_LOSSES), default="complete", show_default=True)
@click.option("--model", "backbone", type=click.Choice(LANDMARK_BACKBONES), default="resnet18", show_default=True,
              help="the backbone")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--image-size", default=224, show_default=True)
@click.option("--patience", default=10, show_default=True, help="early stopping (epochs)")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False, resolve_path=True), default=None,
              help="local ImageNet weights (never downloaded)")
@click.option("--lr-backbone", default=2e-5, show_default=True, help="phase 2 backbone learning rate")
@click.option("--lr-head", default=2e-4, show_default=True, help="phase 2 head learning rate")
@click.option("--split-seed", default=42, show_default=True)
@placement_options
@click.option("--wait", is_flag=True, help="follow progress and print the results")
def submit_ensemble_cmd(data_dir, seeds, epochs_head, epochs, loss, backbone, batch_size, image_size, patience,
                        pretrained, lr_backbone, lr_head, split_seed, placement, wait) -> None:
    """A seed ensemble of the chest-landmark regressor, one member per worker.

    \b
    Examples:
      medq data synth-chest data/chest --n 300 --seed 1
      medq submit ensemble --data data/chest --seeds 5 --loss complete --wait
      medq submit ensemble --data /shared/chest --seeds 5 --project labA --priority low
    """
    from medq.common.families.chest.spec import EnsembleSpec
    from medq.common.specs import SplitSpec
    from medq.scheduler.submit import submit_training

    if seeds < 1:
        raise click.BadParameter("must be at least 1", param_hint="--seeds")
    spec = EnsembleSpec(backbone=backbone, loss=loss, epochs_head=epochs_head, epochs=epochs, batch_size=batch_size,
                        image_size=image_size, patience=patience, pretrained=pretrained,
                        lr_finetune_backbone=lr_backbone, lr_finetune_head=lr_head, split=SplitSpec(seed=split_seed))
    settings = load_settings()
    job_id = submit_training(settings, spec.kind, spec, data_dir, list(range(seeds)), placement)
    announce(job_id, wait)


@submit.command("hrnet")
@click.option("--data", "data_dir", type=click.Path(path_type=Path),
              help="an ISBI 2015 root (RawImage/, AnnotationsByMD/) or, with --format csv, a CSV file or its folder")
@click.option("--format", "fmt", type=click.Choice(["isbi", "csv"]), default="isbi", show_default=True)
@click.option("--annotator", type=click.Choice(["senior", "junior", "mean"]), default="senior", show_default=True,
              help="ISBI ground truth")
@click.option("--test-dir", "test_dirs", multiple=True, type=click.Path(path_type=Path),
              help="an extra test set, scored on its own: ROOT/RawImage/Test1Data, or a CSV (repeatable)")
@click.option("--width", type=click.Choice(["w18s", "w18", "w32", "w48"]), default="w32", show_default=True)
@click.option("--image-size", default=512, show_default=True)
@click.option("--sigma", default=3.5, show_default=True, help="heatmap Gaussian sigma at the input scale, px")
@click.option("--refine", type=click.Choice(["dark", "quadratic", "none"]), default="dark", show_default=True)
@click.option("--epochs", default=250, show_default=True)
@click.option("--batch-size", default=6, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--warmup-epochs", default=5, show_default=True)
@click.option("--amp/--no-amp", default=True, show_default=True, help="mixed precision (CUDA only)")
@click.option("--channels-last", is_flag=True, help="NHWC memory format (tensor cores)")
@click.option("--progressive", default=None, help="SIZE:EPOCHS, e.g. 384:100: the first EPOCHS at SIZE px")
@click.option("--top-k", default=3, show_default=True, help="best checkpoints averaged at evaluation")
@click.option("--flip-pairs", default="", help="left/right landmark pairs for a flip test, e.g. 3:4,5:6 (1-based); "
              "none by default: lateral cephalograms have none")
@click.option("--patience", default=0, show_default=True, help="early stopping on validation MRE (0: off)")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False, resolve_path=True), default=None,
              help="local timm HRNet weights (never downloaded)")
@click.option("--loader-workers", default=0, show_default=True)
@click.option("--split-seed", default=42, show_default=True)
@click.option("--resume", "resume_job", default=None,
              help="go on with this failed or cancelled hrnet job from its last checkpoint (its spec and data kept)")
@placement_options
@click.option("--wait", is_flag=True, help="follow progress and print the results")
def submit_hrnet_cmd(data_dir, fmt, annotator, test_dirs, width, image_size, sigma, refine, epochs, batch_size, lr,
                     warmup_epochs, amp, channels_last, progressive, top_k, flip_pairs, patience, pretrained,
                     loader_workers, split_seed, resume_job, placement, wait) -> None:
    """HRNet heatmap training for cephalometric landmarks; MRE and SDR in millimetres.

    \b
    Examples:
      medq data synth-ceph data/ceph --n 40 --n-test 10
      medq submit hrnet --data data/ceph --test-dir data/ceph/RawImage/Test1Data --epochs 60 --wait
    """
    from medq.common.families.ceph.spec import HRNetSpec
    from medq.common.specs import SplitSpec
    from medq.scheduler.submit import submit_training

    if resume_job:
        resume_and_announce(resume_job, HRNetSpec.kind, wait)
        return
    if data_dir is None:
        raise click.UsageError("give --data DIR (or --resume JOB)")

    stages = None
    if progressive:
        try:
            size, count = (int(v) for v in progressive.split(":"))
        except ValueError:
            raise click.BadParameter("expected SIZE:EPOCHS, e.g. 384:100", param_hint="--progressive") from None
        stages = (size, count)
    try:
        pairs = tuple(tuple(int(k) - 1 for k in pair.split(":")) for pair in flip_pairs.split(",") if pair.strip())
    except ValueError:
        raise click.BadParameter("expected A:B pairs of landmark numbers, e.g. 3:4,5:6",
                                 param_hint="--flip-pairs") from None
    spec = HRNetSpec(width=width, image_size=image_size, sigma=sigma, refine=refine, epochs=epochs,
                     batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs, amp=amp,
                     channels_last=channels_last, progressive=stages,
                     top_k=top_k, flip_pairs=pairs, patience=patience, format=fmt, annotator=annotator, pretrained=pretrained,
                     loader_workers=loader_workers, split=SplitSpec(seed=split_seed))
    job_id = submit_training(load_settings(), spec.kind, spec, data_dir, placement=placement,
                             test_dirs=list(test_dirs))
    announce(job_id, wait)


@submit.command("segment")
@click.option("--data", "data_dir", type=click.Path(path_type=Path),
              help="a MedSeg folder (images_<name>.npy HU + masks_<name>.npy, + volumes_<name>.npy) or a NIfTI "
                   "folder (imagesTr/<case>[_0000].nii.gz + labelsTr/<case>.nii.gz, optional dataset.json)")
@click.option("--arch", type=click.Choice(SEG_ARCHS), default="unetplusplus", show_default=True,
              help="segmentation-models-pytorch architecture")
@click.option("--encoder", default="efficientnet-b3", show_default=True,
              help="smp encoder name, or any timm model as tu-<name>")
@click.option("--image-size", default=384, show_default=True)
@click.option("--epochs", default=60, show_default=True)
@click.option("--batch-size", default=6, show_default=True)
@click.option("--lr", default=1e-4, show_default=True, help="AdamW's starting learning rate")
@click.option("--max-lr", default=5e-4, show_default=True, help="OneCycle's peak learning rate")
@click.option("--amp/--no-amp", default=True, show_default=True, help="mixed precision (CUDA only)")
@click.option("--patience", default=7, show_default=True, help="early stopping on validation lesion Dice (0: off)")
@click.option("--lesion-weight", default=3.0, show_default=True, help="sampling weight of slices with a lesion")
@click.option("--loss-weights", default="0.25,0.5,0.25", show_default=True, help="CE,Dice,Focal")
@click.option("--gamma", default=2.5, show_default=True, help="focal loss gamma")
@click.option("--class-weights", default=None,
              help="CE weights: ground glass,consolidation,other lung,background  [default: inverse pixel frequency "
                   "of the training split]")
@click.option("--empty", type=click.Choice(["one", "skip"]), default="one", show_default=True,
              help="per-slice Dice/IoU where a class is absent from both masks: count 1, or leave the slice out")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False, resolve_path=True), default=None,
              help="local model or encoder weights (never downloaded)")
@click.option("--loader-workers", default=0, show_default=True)
@click.option("--split-seed", default=42, show_default=True)
@click.option("--resume", "resume_job", default=None,
              help="go on with this failed or cancelled segment job from its last checkpoint")
@placement_options
@click.option("--wait", is_flag=True, help="follow progress and print the results")
def submit_segment_cmd(data_dir, arch, encoder, image_size, epochs, batch_size, lr, max_lr, amp, patience,
                       lesion_weight, loss_weights, gamma, class_weights, empty, pretrained, loader_workers, split_seed,
                       resume_job, placement, wait) -> None:
    """UNet++ (any smp model) for CT lesions; Dice and IoU per class on the test split.

    \b
    Examples:
      medq data synth-ct data/ct --n 40
      medq submit segment --data data/ct --encoder resnet34 --image-size 128 --epochs 20 --wait
    """
    from medq.common.families.ct_lesions.spec import SegmentSpec
    from medq.common.specs import SplitSpec
    from medq.scheduler.submit import submit_training

    if resume_job:
        resume_and_announce(resume_job, SegmentSpec.kind, wait)
        return
    if data_dir is None:
        raise click.UsageError("give --data DIR (or --resume JOB)")
    weights = _floats(loss_weights, 3, "--loss-weights")
    spec = SegmentSpec(arch=arch, encoder=encoder, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                       max_lr=max_lr, amp=amp, patience=patience, lesion_weight=lesion_weight, w_ce=weights[0],
                       w_dice=weights[1], w_focal=weights[2], gamma=gamma,
                       class_weights=_floats(class_weights, 4, "--class-weights") if class_weights else None,
                       empty=empty, pretrained=pretrained, loader_workers=loader_workers,
                       split=SplitSpec(seed=split_seed))
    job_id = submit_training(load_settings(), spec.kind, spec, data_dir, placement=placement)
    announce(job_id, wait)


def _floats(text: str, n: int, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {text!r}", param_hint=option)
    return values


@submit.command("infer")
@click.option("--archive", type=click.Path(path_type=Path), default=None,
              help="a folder tree, .zip or .tar[.gz] of DICOM, PNG and JPEG files (or CT volumes)")
@click.option("--pacs", default=None, metavar="URL",
              help="instead of --archive: a PACS's DICOMweb root (http://pacs:8042/dicom-web); the studies of "
                   "--query are retrieved one by one by the tasks that process them")
@click.option("--query", default=None, metavar="QIDO",
              help="with --pacs: the QIDO-RS search, e.g. 'Modality=CT&StudyDate=20261130-20261201'")
@click.option("--send-to", default=None, metavar="URL",
              help="store every DICOM output (SEG, SR) on this DICOMweb root with STOW-RS; each answer is kept "
                   "per study (credentials: MEDQ_PACS_USERNAME, MEDQ_PACS_PASSWORD[_FILE])")
@click.option("--outputs", default=None, metavar="NAMES",
              help="what to write per study under --out, comma-separated: overlay, sr (landmark models); npz, "
                   "overlay, nifti, seg, sr (a segmentation model)  [default: all that the study's input allows]")
@click.option("--seg-type", type=click.Choice(["binary", "fractional"]), default="binary", show_default=True,
              help="a DICOM SEG's segments: class masks, or each class's probability")
@click.option("--model", required=True, help="a trained job id (ensemble, hrnet, segment) or a checkpoint file")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="write overlay PNGs here (and, for a segmentation model, which needs it, the masks)")
@click.option("--chunk", default=None, type=click.IntRange(min=1),
              help="studies per task  [default: 256 images; 4 CT volumes for a segmentation model]")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True)
@click.option("--aggregation", type=click.Choice(["mean", "median", "weighted"]), default="mean", show_default=True,
              help="how an ensemble's members combine (weighted: by each member's validation loss); what a "
                   "model supports is checked at submit")
@click.option("--window", default=None, help="run only between these times, e.g. 22:00-06:00")
@click.option("--preempt", is_flag=True,
              help="run at high priority, and training of any priority yields its workers to this job at their next "
                   "step (while --window is open); it resumes by itself when the job is done or the window closes")
@placement_options
@click.option("--batch-size", default=32, show_default=True)
@click.option("--loader-workers", type=click.IntRange(min=0), default=None,
              help="decoding processes per worker  [default: 2 on a GPU worker, 0 on a CPU worker]")
@click.option("--skip-done", is_flag=True, help="skip files an earlier job did with the same archive and model")
@click.option("--spread-limit", "spread_limit_fraction", type=float, default=0.03, show_default=True,
              help="landmark models: flag a study for review when a landmark's spread exceeds this fraction of "
                   "the image width")
@click.option("--wait", is_flag=True, help="follow progress until the job ends")
def submit_infer_cmd(archive, pacs, query, send_to, outputs, seg_type, model, out_dir, chunk, tta, aggregation, window,
                     preempt, placement, batch_size, loader_workers, skip_done, spread_limit_fraction, wait) -> None:
    """Landmarks (or, with a segmentation model, lesion masks and volumes) for every study of an
    archive or of a PACS query, with the failures listed. A segmentation model's study is a .npy
    or NIfTI volume or a DICOM series; DICOM studies get DICOM SEG and SR outputs.

    \b
    Examples:
      medq submit infer --archive /exports/2026-11 --model 3f2a --window 22:00-06:00
      medq submit infer --archive scans.tar --model 7c1d --out /data/seg-out --priority high
      medq submit infer --pacs http://pacs:8042/dicom-web --query ModalitiesInStudy=CT \\
          --model 7c1d --out /data/seg-out --send-to http://pacs:8042/dicom-web
    """
    from medq.scheduler.infer_plan import submit_infer

    if (archive is None) == (pacs is None):
        raise click.UsageError("give the studies as --archive PATH or as --pacs URL --query ..., one of them")
    if query and not pacs:
        raise click.UsageError("--query searches a PACS: give --pacs URL with it")
    chosen = None if outputs is None else tuple(name.strip() for name in outputs.split(",") if name.strip())
    job_id, n_studies, n_chunks = submit_infer(
        load_settings(), pacs or archive, model, project=placement.project, chunk=chunk, tta=tta,
        aggregation=aggregation, window=window, priority=placement.priority, preempt=preempt, batch_size=batch_size, loader_workers=loader_workers, skip_done=skip_done,
        spread_limit_fraction=spread_limit_fraction, out_dir=str(out_dir.resolve()) if out_dir else None,
        query=query, send_to=send_to, outputs=chosen, seg_type=seg_type)
    click.echo(job_id)
    if n_studies == 0:
        click.echo("0 studies: " + ("the query matched nothing on the PACS" if pacs else "the archive holds no files")
                   + "; the job has ended", err=True)
        return
    click.echo(f"{n_studies} studies in {n_chunks} chunk(s)" + (f"; runs {window}" if window else ""), err=True)
    if wait:
        from medq.scheduler.render import console
        from medq.scheduler.watch import watch_job

        state = watch_job(current_store(), job_id, console(stderr=True))
        print_infer_summary(current_store(), job_id)
        sys.exit(0 if state == "succeeded" else 1)


@submit.command("report")
@click.argument("jobs", nargs=-1, required=True, shell_complete=complete_job)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder for the HTML (and PDF)  [default: the report job's folder under MEDQ_ARTIFACTS]")
@click.option("--pdf", is_flag=True, help="also print the page to PDF (headless Chromium on the worker)")
@project_option
@click.option("--wait", is_flag=True, help="wait for the report and print where it is")
def submit_report_cmd(jobs, out_dir, pdf, project, wait) -> None:
    """An evaluation report of one training job, of several training jobs of one family side by
    side (same test split), or of one inference job: one self-contained HTML file. A job still
    running is shown as of now. Refused before anything is enqueued: an unknown job, jobs of two
    families, different test splits, a job with nothing to show yet.

    \b
    Examples:
      medq submit report 3f2a --wait
      medq submit report 3f2a 9b41 --pdf --out reports/
    """
    from medq.scheduler.report_plan import submit_report

    settings = load_settings()
    job_id, html = submit_report(settings, list(jobs), out_dir, pdf, project=project)
    click.echo(job_id)
    click.echo(f"report of {', '.join(jobs)} will be written to {html}", err=True)
    if wait:
        sys.exit(wait_and_report(job_id))
