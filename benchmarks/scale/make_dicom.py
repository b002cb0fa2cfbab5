"""A CT-like DICOM folder from real BloodMNIST pixels, for the scale benchmarks: PATIENTS x SLICES 12-bit
single-frame files at SIZE px (MONOCHROME2, rescale to Hounsfield-like units), one patient per PatientID, in
<class>/ sub-folders. Every slice is a real BloodMNIST-28 image (grayscale) **upsampled** with PIL's bicubic filter
and scaled to 12 bits with seeded noise in the low 4 bits: it measures cost, not quality. --no-window leaves the
files without WindowCenter/Width, so the percentile window (the expensive rule) applies.

    python benchmarks/scale/make_dicom.py --patients 30 --slices 100 --size 512 --out ../scale-data/ct512_3000
"""

import argparse
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--patients", type=int, default=30)
    p.add_argument("--slices", type=int, default=100, help="Slices per patient.")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="../shared/data/bloodmnist.npz")
    p.add_argument("--no-window", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: choose a new folder.")
    with np.load(args.data) as npz:
        images, labels = npz["train_images"], npz["train_labels"][:, 0]
    rng = np.random.default_rng(0)
    index = 0
    for patient in range(args.patients):
        for k in range(args.slices):
            source = index % len(images)
            gray = np.asarray(Image.fromarray(images[source].mean(-1).round().astype(np.uint8)).resize(
                (args.size, args.size), Image.BICUBIC)).astype(np.uint16)
            stored = gray * 16 + rng.integers(0, 16, gray.shape, dtype=np.uint16)  # 12 bits: 0..4095
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.PatientID, ds.Modality = f"BENCH-{patient:03d}", "CT"
            ds.set_pixel_data(stored, "MONOCHROME2", 12)
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            if not args.no_window:
                ds.WindowCenter, ds.WindowWidth = 40, 400
            path = out / CLASSES[labels[source]] / f"p{patient:03d}_{k:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            index += 1
    print(f"wrote {index} slices of {args.patients} patients to {out}")


if __name__ == "__main__":
    main()
