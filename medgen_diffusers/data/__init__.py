"""The data of every command, from any source: ``load_images(SOURCE, split)`` gives one split as
:class:`ImageData` (uint8 images, labels, class names, a content checksum, patients; uint16 images too with
``bit_depth=16``), from a prepared store when there is one.

Layers, each importing only those below it (no import circle):

* ``files`` -- listing a folder's files (os.scandir, one order for every reader);
* ``images`` -- :class:`ImageData`, :class:`DataError` and what is done to a batch (subset, resize, 16-bit view,
  the model's range, augmentation);
* the readers, one per source kind -- ``medmnist`` (the official files, MD5-verified), ``sources`` (image folders,
  ``.npz``, ``datasets``), ``medical`` + ``medical_folders`` (DICOM and NIfTI, file by file);
* ``readers`` -- :func:`~medgen_diffusers.data.readers.read_split`, one split decoded in memory, whatever the kind;
* ``writers`` -- decoding a source into a store's arrays (worker processes for image folders);
* ``store`` -- the prepared, memory-mapped store and its cache (``medgen prepare``);
* ``loading`` -- :func:`load_images` and :func:`class_counts`: the store when there is one, else the readers.

* ``source`` -- :class:`DataSource`, the one object a command carries a source in (the dataset, root and the
  options the run read it with): ``DataSource.load(split)`` is ``load_images`` with them; the evaluation, audit,
  utility, figures, distillation and training receive it (a bare name or path is ``DataSource.of(name)``).
"""

from .images import (AUGMENTATION_POLICY, SPLITS, DataError, ImageData, MedMNISTTensors, augment, augment_dihedral,
                     clean_batch, eight_bit, keep_subset, kept_rows, resize_images, resolve_augmentation,
                     to_model_range)
from .loading import class_counts, load_images
from .medmnist import (ROOT_ENV_VAR, SIZES, available_flags, class_names, expected_md5, file_digest, load_medmnist,
                       load_medmnist_tensors, medmnist_path, npz_filename, resolve_root)
from .source import DataSource

__all__ = ["AUGMENTATION_POLICY", "SPLITS", "DataError", "ImageData", "MedMNISTTensors", "augment", "augment_dihedral",
           "clean_batch", "eight_bit", "keep_subset", "kept_rows", "resize_images", "resolve_augmentation",
           "to_model_range", "class_counts", "load_images", "ROOT_ENV_VAR", "SIZES", "available_flags", "class_names",
           "expected_md5", "file_digest", "load_medmnist", "load_medmnist_tensors", "medmnist_path", "npz_filename",
           "resolve_root", "DataSource"]
