"""Segment new, unlabelled scans with a model package: the engine behind ``ctseg segment``.

The package is loaded once; each input (a DICOM folder, NIfTI or NRRD) is read as ingestion
reads it (series choice, HU rescaling, finiteness and geometry checks), segmented in the
canonical orientation and written back onto its own grid. Every output of one input is written
into a temporary folder that replaces ``OUT/<name>/`` only when all of them succeeded, so a
failed input leaves nothing that looks complete; a failing input does not stop the others.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import torch
from tqdm import tqdm

from ctseg.core.atomic import atomic_dir
from ctseg.core.device import resolve_device
from ctseg.core.errors import CtsegError, InputError
from ctseg.core.tasks import DEFAULT_VERTEBRAE, get_task
from ctseg.formats.outputs import write_case_outputs
from ctseg.inference.package import load_package
from ctseg.inference.predict import VolumePrediction, predict_volume_with_evidence


def input_name(path: Path) -> str:
    """Output folder name of an input: the file name without image suffixes, or the folder name."""
    name = path.name
    name = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$", "", name, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "input"


@dataclass
class SegmentResult:
    source: Path
    out_dir: Path | None = None
    error: str | None = None
    files: list[str] = field(default_factory=list)


class Segmenter:
    """A loaded model package applied to one input after another."""

    def __init__(
        self,
        package: str | Path,
        *,
        device: str = "auto",
        fast: bool = False,
        localiser: str | Path | None = None,
        float32: bool = False,
    ):
        self.device = resolve_device(device)
        self.localiser = None
        if localiser is not None:
            from ctseg.localisation.predict import load_localiser

            self.localiser = load_localiser(localiser, device)
        self.model, self.plan = load_package(package, self.device)
        self.package = Path(package)
        self.task = get_task(self.plan["task"])
        if self.task.input_kind != "ct":
            raise InputError(
                f"a {self.plan['task']} model segments {self.task.input_kind.upper()} images, not CT "
                "volumes; use a vertebrae or metal model",
                path=self.package,
            )
        if self.plan.get("classes") == "foreground" and self.localiser is None:
            raise InputError(
                "a vertebra-foreground model names no levels by itself; pass --localiser with "
                "the centroid localiser it was trained with",
                path=self.package,
            )
        self.tta = False if fast else bool(self.plan.get("tta_flip", False))
        if float32:  # the plans' bf16 forward passes on a bf16 CPU, declined
            self.plan["cpu_bf16"] = False
            if self.localiser is not None:
                self.localiser[1]["cpu_bf16"] = False

    def read(self, source: Path, series_uid: str | None = None) -> tuple[sitk.Image, Path | None]:
        from ctseg.ingest.volume import read_image

        img, _header = read_image(source, series_uid=series_uid, progress=False)
        if img.GetDimension() != 3:
            raise InputError(f"expected a 3D CT, got a {img.GetDimension()}D image", path=source)
        if min(img.GetSize()) < 2:
            raise InputError(f"expected a 3D CT, got size {img.GetSize()}", path=source)
        return img, (source if source.is_dir() else None)

    def segment(self, ct: sitk.Image) -> VolumePrediction:
        centroids = None
        if self.localiser is not None and self.task.vertebrae:
            from ctseg.localisation.predict import predict_centroids

            centroids = predict_centroids(self.localiser, ct)
        with torch.inference_mode():
            return predict_volume_with_evidence(
                self.model,
                self.plan,
                ct,
                device=self.device,
                tta_flip=self.tta,
                centroids=centroids,
            )

    def write_outputs(
        self, tmp: Path, ct: sitk.Image, pred: VolumePrediction, dicom_dir: Path | None, title: str
    ) -> list[str]:
        """Every output of one input into ``tmp``: labels NIfTI, Slicer .seg.nrrd, centroids
        (ours, VerSe, Slicer markups), per-vertebra statistics, QC flags and image, and a
        DICOM-SEG referencing the source series for DICOM input (:mod:`ctseg.formats`)."""
        if not self.task.vertebrae:  # metal: the mask only
            sitk.WriteImage(pred.labels, str(tmp / "labels.nii.gz"), useCompression=True)
            return ["labels.nii.gz"]
        paths = write_case_outputs(
            pred.labels,
            ct,
            tmp,
            trained_ids=self.trained_ids,
            confidence_measures=pred.confidence or None,
            relabelled_fraction=pred.relabelled_fraction,
            localiser=self.localiser,
            title=title,
        )
        names = sorted(p.name for p in paths.values())
        if dicom_dir is not None:
            # Last, as in the workflow: a DICOM-SEG that cannot be written (a source whose
            # anonymiser blanked its UIDs, a prediction with no vertebra) is noted in qc.json
            # and reported, and every other output stands.
            from ctseg.formats.dicom_seg import write_dicom_seg

            files = sorted(p for p in dicom_dir.rglob("*") if p.is_file())
            try:
                names.append(write_dicom_seg(pred.labels, files, tmp / "labels.seg.dcm").name)
            except InputError as exc:
                note = f"DICOM-SEG not written: {exc}"
                print(f"{dicom_dir}: {note}", file=sys.stderr)
                qc = json.loads((tmp / "qc.json").read_text())
                qc.setdefault("notes", []).append(note)
                (tmp / "qc.json").write_text(json.dumps(qc, indent=1) + "\n")
        return sorted(names)

    @property
    def trained_ids(self) -> list[int]:
        """VerSe ids the model can output (a foreground model: its experiment's labels)."""
        if self.plan.get("classes") == "foreground":
            return [int(c) for c in self.plan["experiment"].get("labels") or DEFAULT_VERTEBRAE]
        return [c for c in self.plan["class_ids"] if c]

    def run_one(self, source: Path, out_root: Path, series_uid: str | None = None) -> SegmentResult:
        res = SegmentResult(source=source)
        try:
            ct, dicom_dir = self.read(source, series_uid)
            pred = self.segment(ct)
            out = out_root / input_name(source)
            with atomic_dir(out) as tmp:
                res.files = self.write_outputs(tmp, ct, pred, dicom_dir, input_name(source))
            res.out_dir = out
        except CtsegError as exc:
            res.error = str(exc) if str(source) in str(exc) else f"{source}: {exc}"
        return res


def segment_inputs(
    inputs: list[Path],
    package: Path,
    out_root: Path,
    *,
    device: str = "auto",
    fast: bool = False,
    series_uid: str | None = None,
    localiser: Path | None = None,
    float32: bool = False,
) -> list[SegmentResult]:
    """Segment every input with one loaded model; errors are collected per input."""
    segmenter = Segmenter(package, device=device, fast=fast, localiser=localiser, float32=float32)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    names = [input_name(Path(p)) for p in inputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"several inputs would write the same output folder: {', '.join(dupes)}")
    results = []
    for src in tqdm(inputs, desc="segment", unit="scan", disable=len(inputs) < 2):
        results.append(segmenter.run_one(Path(src), out_root, series_uid))
    return results
