"""The reader study (reader_study.py, `medgen reader-study`, the app's tab): a blinded mix that gives nothing away
but pixels, answers that survive a restart, and exact statistics with known positives -- a perfect reader is
flagged, a coin-flipping one is not."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from medgen_diffusers.cli import main
from medgen_diffusers.reader_study import KEY, ReaderSession, StudyError, score_study


@pytest.fixture(scope="module")
def study(trained_run, tmp_path_factory):
    """A study of 32 images of a copy of the trained run (scoring writes reader_study.json into the pipeline)."""
    import shutil

    work = tmp_path_factory.mktemp("reader")
    pipeline = Path(shutil.copytree(trained_run, work / "pipeline", ignore=shutil.ignore_patterns("checkpoint-*", "logs")))
    assert main(["reader-study", "create", str(pipeline), "--num-images", "32", "--steps", "2", "--seed", "3",
                 "--out", str(work / "study"), "--device", "cpu"]) == 0
    return work / "study"


def test_a_study_gives_nothing_away_but_pixels(study, trained_run):
    key = json.loads((study / KEY).read_text())
    files = sorted((study / "images").iterdir())
    assert len(files) == len(key) == 32 and Counter(v["truth"] for v in key.values()) == {"real": 16, "synthetic": 16}
    # Class-matched: every class as often among the synthetic images as among the real ones.
    assert Counter(v["class"] for v in key.values() if v["truth"] == "real") == \
        Counter(v["class"] for v in key.values() if v["truth"] == "synthetic")
    # Same format, size, mode and encoder; names are opaque ids; no metadata.
    for path in files:
        with PIL.Image.open(path) as image:
            assert (image.format, image.size, image.mode, image.info) == ("PNG", (28, 28), "RGB", {})
        assert len(path.stem) == 12 and path.stem in key
    study_json = json.loads((study / "study.json").read_text())
    assert study_json["split"] == "test" and study_json["provenance"]["weights_sha256"]
    assert study_json["provenance"]["data"]["checksum"]
    # The training images only when asked; an existing study is never overwritten.
    assert main(["reader-study", "create", str(trained_run), "--num-images", "4", "--split", "train",
                 "--out", str(study.parent / "x")]) == 2 and not (study.parent / "x").exists()
    assert main(["reader-study", "create", str(trained_run), "--num-images", "4", "--out", str(study)]) == 2


def test_perfect_and_coin_flipping_readers_and_a_restart(study):
    session = ReaderSession(study)
    key = json.loads((study / KEY).read_text())
    rng = np.random.default_rng(0)
    while True:  # one image at a time, as the app shows them
        item, pixels, done, total = session.next_item("perfect")
        if item is None:
            break
        assert pixels.shape == (28, 28, 3) and total == 32
        session.record("perfect", item, key[item]["truth"], 5, key[item]["class"])
        session.record("coin", item, str(rng.choice(["real", "synthetic"])), int(rng.integers(1, 6)))
    assert done == 32
    # A restart: a new session reads the answers back; the reader has nothing left, another starts at the top.
    restarted = ReaderSession(study)
    assert restarted.next_item("perfect")[0] is None and restarted.next_item("new reader")[2] == 0
    with pytest.raises(StudyError, match="Enter your name"):
        restarted.record(" ", item or next(iter(key)), "real", 3)
    result = score_study(study)
    perfect, coin = result["readers"]["perfect"], result["readers"]["coin"]
    assert perfect["accuracy"] == 1 and perfect["p_value"] < 0.001 and perfect["auc"] == 1
    assert perfect["sensitivity"] == perfect["specificity"] == 1 and perfect["ci95"][0] > 0.89
    assert coin["n"] == 32 and coin["ci95"][0] < 0.5 < coin["ci95"][1] and coin["p_value"] > 0.05
    assert -1 <= result["fleiss_kappa"] < 0.5 and (study / "results.png").is_file()
    assert main(["reader-study", "score", str(study)]) == 0
    # The pipeline's card shows the pooled numbers; no reader's name leaves the study folder.
    published = (study.parent / "pipeline" / "reader_study.json").read_text()
    assert "perfect" not in published and "coin" not in published
    assert main(["card", str(study.parent / "pipeline")]) == 0
    card = (study.parent / "pipeline" / "README.md").read_text()
    assert "Reader study (2 reader(s), 64 answers on 32 images, test split): pooled accuracy" in card
    # A study folder inside a pipeline folder is never pushed (real images, the key).
    import shutil

    shutil.copytree(study, study.parent / "pipeline" / "my_study")
    assert main(["push", str(study.parent / "pipeline"), "someone/model", "--dry-run"]) == 2
