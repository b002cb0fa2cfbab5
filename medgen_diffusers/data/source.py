""":class:`DataSource`: one data source as every command receives it -- the dataset (a MedMNIST flag, a folder,
a file, a store, a ``datasets`` name), the MedMNIST root and the options the source is read with (columns, DICOM /
NIfTI window and slices, patient splits, crop, bit depth, the train subset). Built once per command (from the
run's ``run_config.json`` by :func:`medgen_diffusers.provenance.data_source`, or from the command line) and handed
to the evaluation, the audit, utility, figures, distillation and training, so no command resolves a bare string
again and every one reads the data exactly as the run did.
"""

import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Union

from .images import ImageData
from .loading import class_counts, load_images


@dataclass
class DataSource:
    """The real data a command compares a model with (the run's own unless named explicitly)."""

    dataset: str = "bloodmnist"
    root: Optional[str] = None
    options: Dict = field(default_factory=dict)  # how to read it: load_images' keyword arguments
    recorded_md5: Optional[str] = None  # the checksum the model was trained on, when known
    explicit: bool = False  # named on the command line instead of taken from the run
    run_config: Optional[Dict] = None

    @classmethod
    def of(cls, data: Union["DataSource", str]) -> "DataSource":
        """``data`` itself when it is a DataSource; a dataset name or path read with the default options."""
        return data if isinstance(data, DataSource) else cls(dataset=str(data))

    def load(self, split: str = "train", size: Optional[int] = None, prepare: bool = False) -> ImageData:
        """One split as ImageData, read as the run read it: the prepared store when there is one (``prepare``:
        make it first, as training does)."""
        return load_images(self.dataset, split, size, self.root, prepare=prepare, **self.options)

    def class_counts(self, split: str = "train", size: Optional[int] = None):
        """Images per class of ``split`` (from a store's manifest without reading pixels)."""
        return class_counts(self.dataset, split, size, self.root, **self.options)

    def record(self, train_md5: Optional[str]) -> Dict:
        """The result's data block; warns once when the checksum differs from the one the model was trained on."""
        matches = None if self.recorded_md5 is None or train_md5 is None else train_md5 == self.recorded_md5
        if matches is False:
            warnings.warn(f"{self.dataset}: its train split has checksum {train_md5}, but the model was trained on "
                          f"data with checksum {self.recorded_md5}: these numbers are not about the training data.",
                          stacklevel=2)
        return {"source": self.dataset, "checksum": train_md5, "recorded_checksum": self.recorded_md5,
                "matches_training_data": matches, "named_explicitly": self.explicit}
