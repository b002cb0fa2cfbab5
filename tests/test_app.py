"""The web demo, for real: `medgen app` served in a subprocess, driven through gradio_client and looked at in
headless Chromium; the model-card tab's rule for real training images."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from medgen_diffusers.app import CLOSEST_PAIRS, Demo
from medgen_diffusers.cli import main

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As in a closed network: no background fetches, a fresh profile (Chromium's own connections are refused here).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900", "--virtual-time-budget=20000"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline_copy(run_dir, dest):
    """The saved pipeline of a run without its checkpoints and logs (tests add files to it)."""
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoint-*", "logs", "samples")))


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    """`medgen app RUN --study STUDY` on a free port (a reader study of 8 images of the run's test split); yields
    (url, process, study); the server is stopped afterwards."""
    work = tmp_path_factory.mktemp("served")
    study = work / "study"
    assert main(["reader-study", "create", str(trained_run), "--num-images", "8", "--steps", "2", "--out", str(study),
                 "--device", "cpu"]) == 0
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(work / "gradio")}
    process = subprocess.Popen([str(BIN / "medgen"), "app", str(trained_run), "--port", str(port), "--device", "cpu",
                                "--study", str(study)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    if process.poll() is not None or time.time() >= deadline:
        process.kill()
        raise AssertionError(f"medgen app did not start:\n{process.communicate()[0][-3000:]}")
    yield url, process, study
    process.terminate()
    process.wait(timeout=30)


def test_app_generates_the_same_npz_as_medgen_sample_and_shows_errors(served, trained_run, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, process, study = served
    client = Client(url, verbose=False)
    grid, npz = client.predict("platelet", "saved", 3, 1.0, 5, 4, api_name="/generate")
    assert PIL.Image.open(grid).size == (2 * 28 * 4, 2 * 28 * 4)  # a 2x2 grid of 28-px images, enlarged 4x
    with np.load(npz, allow_pickle=False) as got:
        assert got["train_images"].shape == (4, 28, 28, 3) and (got["train_labels"] == 7).all()
    # What the page offers for download is what the command line writes for the same arguments, byte for byte.
    assert main(["sample", str(trained_run), "--class", "platelet", "--steps", "3", "--seed", "5", "--num-images",
                 "4", "--device", "cpu", "--out", str(tmp_path / "cli.npz")]) == 0
    assert Path(npz).read_bytes() == (tmp_path / "cli.npz").read_bytes()

    # Bad input: our message, shown to the user; the server goes on serving.
    with pytest.raises(AppError, match="seed must be >= 0"):
        client.predict("platelet", "ddim", 3, 1.0, -1, 4, api_name="/generate")
    grid, _ = client.predict("all classes (balanced)", "dpmsolver", 2, 2.0, 0, 1, api_name="/generate")
    assert process.poll() is None and PIL.Image.open(grid).size == (28 * 4, 28 * 4)

    if CHROMIUM is None:
        pytest.skip("no Chromium for the browser check: apt-get install chromium (make test does, where it can)")
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Model card" in dom and "Generate" in dom and "MedMNIST-layout npz" in dom  # rendered by the page's JS
    assert "Reader study" in dom and not any(item in dom for item in json.loads((study / "key.json").read_text()))
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(PIL.Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (900, 1280)
    assert (pixels < 128).mean() > 0.005 and pixels.std() > 20  # text and controls drawn, not a blank page


def test_card_tab_never_shows_a_private_training_image(memorised_run, trained_run, tmp_path):
    public = pipeline_copy(trained_run, tmp_path / "public")
    private = pipeline_copy(memorised_run[0], tmp_path / "private")
    for folder in (public, private):
        PIL.Image.new("RGB", (56, 28)).save(folder / CLOSEST_PAIRS)
    figure, _ = Demo(public, "cpu").closest_pairs()
    assert figure == str(public / CLOSEST_PAIRS)  # BloodMNIST is public: its audit figure may be shown
    figure, why = Demo(private, "cpu").closest_pairs()
    assert figure is None and "your own data" in why
    # A result of other weights (here the shipped model's evaluation, copied in) is not this model's: not shown.
    from medgen_diffusers import DEFAULT_MODEL

    shutil.copy(Path(DEFAULT_MODEL) / "evaluation.json", private / "evaluation.json")
    card = Demo(private, "cpu").card_markdown()
    assert "Not evaluated yet" in card and "12.005" not in card and "Not trained with differential privacy" in card


def test_the_shipped_model_offers_its_four_step_student(tmp_path):
    """Serving the shipped model, the page offers the 4-step model too; its npz is `medgen sample --fast`'s."""
    from medgen_diffusers.app import STUDENT

    demo = Demo(None, "cpu")
    assert STUDENT in demo.samplers and demo.default_steps(STUDENT) == 4 and demo.default_steps() == 20
    _, npz = demo.generate("platelet", STUDENT, 4, 1.0, 2, 2)
    assert main(["sample", "--fast", "--class", "platelet", "--seed", "2", "--num-images", "2", "--device", "cpu",
                 "--out", str(tmp_path / "cli.npz")]) == 0
    assert Path(npz).read_bytes() == (tmp_path / "cli.npz").read_bytes()


def test_reader_study_tab_sends_pixels_only_and_keeps_every_answer(served, memorised_run, tmp_path):
    import urllib.request

    from gradio_client import Client

    url, process, study = served
    key = json.loads((study / "key.json").read_text())
    forbidden = [*key, "key.json", "truth", str(study), "answers.jsonl"]
    client = Client(url, verbose=False)
    image, progress = client.predict("reader A", api_name="/reader_start")
    assert "Image 1 of 8" in progress and PIL.Image.open(image).size[0] >= 280  # enlarged for reading
    image, progress = client.predict("reader A", "synthetic", 4, "", api_name="/reader_answer")
    assert "Image 2 of 8" in progress
    # What the browser gets: the page's config, the API description, every response -- never an id, the key or a path.
    seen = [urllib.request.urlopen(url + "config").read().decode(), json.dumps(client.view_api(print_info=False,
                                                                                            return_format="dict")),
            str(image), progress]
    assert not [word for word in forbidden for text in seen if word in text]
    answers = [json.loads(line) for line in (study / "answers.jsonl").read_text().splitlines()]
    assert [(a["reader"], a["answer"], a["confidence"]) for a in answers] == [("reader A", "synthetic", 4)]
    assert answers[0]["item"] in key
    # A study of private data shows patients' images: never shared beyond this machine.
    private = tmp_path / "private_study"
    assert main(["reader-study", "create", str(memorised_run[0]), "--num-images", "4", "--steps", "1", "--out",
                 str(private), "--device", "cpu"]) == 0
    assert main(["app", str(memorised_run[0]), "--study", str(private), "--share"]) == 2
    assert json.loads((private / "study.json").read_text())["private"] is True
