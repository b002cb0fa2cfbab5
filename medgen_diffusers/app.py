"""The web demo (Gradio): ``medgen app [PIPELINE]`` on your machine, ``space/app.py`` on Hugging Face Spaces.

* **Generate**: class, sampler, steps, guidance, seed and number of images -> a grid, and the MedMNIST-layout npz
  that ``medgen sample`` writes for the same arguments (the same bytes: both go through :func:`export.export`).
* **Reader study** (``--study STUDY``, from ``medgen reader-study create``): one image at a time to a named reader,
  "real or synthetic", a confidence and optionally a class; answers appended to ``STUDY/answers.jsonl`` as they are
  given, so a reader resumes after a restart. The page gets pixels only: the item's id stays in server-side state,
  the key never leaves the study folder. A study of private data is served on 127.0.0.1 only, never shared.
* **Model card**: quality, utility and privacy, each beside its real baseline -- the tables of the model's README,
  from the results saved with it (only those whose recorded weights are this model's), and its differential-privacy
  guarantee when it has one. The audit's closest-pairs figure shows real training images, so it is shown only for
  a model of a public dataset (a MedMNIST set); for your own data the tab says why it is not there.

Bad input (a class the model does not have, steps < 1, too many images) is shown as an error in the page; the
server keeps running. Gradio's usage analytics are off unless you turn them on (``GRADIO_ANALYTICS_ENABLED``).
Gradio is an optional extra: ``pip install "medgen-diffusers[app]"``.
"""

import os
import shutil
import tempfile
import threading
from pathlib import Path

from .models import is_edm
from .runtime import SCHEDULERS

MAX_IMAGES = 64  # per request: a CPU Space generates 64 images at 20 steps in well under a minute
ALL_CLASSES = "all classes (balanced)"
SAVED_SAMPLER = "saved"
STUDENT = "4-step model"  # the shipped model's distilled student (FAST_MODEL), offered beside its samplers
KEEP_REQUESTS = 16  # recent requests' files kept for download; older ones are removed
CLOSEST_PAIRS = "audit_closest_pairs.png"  # `medgen audit PIPELINE` writes it there (public data sets)


def require_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves a hospital's machine by default
    try:
        import gradio
    except ImportError:
        raise ValueError('The web demo needs Gradio, an optional extra: pip install "medgen-diffusers[app]".') from None
    return gradio


def pipeline_folder(pipeline):
    """The local folder of a pipeline argument: the folder itself, the shipped model's, or a Hub repo's snapshot
    (its configs, results and figures only; the weights come through diffusers)."""
    from . import DEFAULT_MODEL

    if pipeline is None:
        return Path(DEFAULT_MODEL)
    if Path(pipeline).is_dir():
        return Path(pipeline)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(pipeline, allow_patterns=["*.json", "*.png", "*.md"]))


class Demo:
    """The model behind the page: one pipeline, one generation at a time (a scheduler keeps per-run state)."""

    def __init__(self, pipeline=None, device="auto"):
        from . import DEFAULT_MODEL, FAST_MODEL
        from .provenance import is_public_source, read_run_config, weights_sha256
        from .runtime import load_pipeline, resolve_device

        self.pipeline = pipeline
        self.pipe = load_pipeline(pipeline).to(resolve_device(device))
        self.saved_scheduler = self.pipe.scheduler
        self.weights = weights_sha256(self.pipe.unet)
        self.folder = pipeline_folder(pipeline)
        run = read_run_config(self.folder) or {}
        # A public dataset's name (a MedMNIST flag), else None: the user's own data, whose path is not shown.
        self.public_dataset = run.get("dataset") if is_public_source(run.get("dataset")) else None
        # Serving the shipped model: its shipped 4-step student is offered as a sampler too.
        self.student = None
        teacher = Path(pipeline or DEFAULT_MODEL).resolve() == Path(DEFAULT_MODEL).resolve()
        if teacher and Path(FAST_MODEL, "model_index.json").is_file():
            self.student = load_pipeline(FAST_MODEL).to(self.pipe.device)
            self.student_weights = weights_sha256(self.student.unet)
        self.lock = threading.Lock()
        # Each request's files, until Gradio has copied them to its cache; removed at exit (and kept to a few).
        self.scratch = tempfile.TemporaryDirectory(prefix="medgen-app-")

    @property
    def class_names(self):
        return list(self.pipe.config.class_names or [])

    @property
    def samplers(self):
        return [SAVED_SAMPLER] + list(SCHEDULERS) + ([STUDENT] if self.student is not None else [])

    def default_steps(self, sampler=SAVED_SAMPLER):
        from .pipelines import default_steps

        return default_steps((self.student if sampler == STUDENT else self.pipe).config)

    def generate(self, class_choice=ALL_CLASSES, sampler=SAVED_SAMPLER, steps=None, guidance_scale=1.0, seed=0,
                 num_images=16):
        """(grid PNG path, npz path) in a new temporary folder; ValueError with what to fix for bad input."""
        import diffusers
        import numpy as np
        from PIL import Image

        from . import FAST_MODEL
        from .export import export, run_key, sample_provenance
        from .figures import square_grid
        from .generation import plan_labels
        from .runtime import resolve_steps

        num_images, seed = int(num_images), int(seed)
        if not 1 <= num_images <= MAX_IMAGES:
            raise ValueError(f"Number of images must be 1 to {MAX_IMAGES}; got {num_images} (use `medgen sample` "
                             "for more).")
        if sampler not in self.samplers:
            raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(self.samplers)}.")
        if steps is not None and int(steps) < 1:
            raise ValueError(f"Steps must be >= 1; got {steps}.")
        if self.class_names:
            one_class = None if class_choice in (None, "", ALL_CLASSES) else class_choice
            labels = plan_labels(self.class_names, num_images, one_class)
            guidance = float(guidance_scale)
        else:
            labels, guidance = None, None
            if float(guidance_scale) != 1.0:
                raise ValueError("Guidance needs a class-conditional model; this one is unconditional (use 1.0).")
        with self.lock:
            for old in sorted(Path(self.scratch.name).iterdir(), key=os.path.getmtime)[:-KEEP_REQUESTS]:
                shutil.rmtree(old, ignore_errors=True)
            out = Path(tempfile.mkdtemp(dir=self.scratch.name)) / "synthetic.npz"
            if sampler == STUDENT:  # the shipped 4-step model, with its own scheduler
                pipe, source, weights = self.student, FAST_MODEL, self.student_weights
            else:
                pipe, source, weights = self.pipe, self.pipeline, self.weights
                if sampler != SAVED_SAMPLER and is_edm(self.saved_scheduler):
                    raise ValueError(f"This model was trained with the EDM formulation: it samples with its own "
                                     f"scheduler only; pick {SAVED_SAMPLER!r}.")
                pipe.scheduler = (self.saved_scheduler if sampler == SAVED_SAMPLER else
                                  getattr(diffusers, SCHEDULERS[sampler]).from_config(self.saved_scheduler.config))
            steps = resolve_steps(pipe, None if steps is None else int(steps))
            key = run_key({"app": True, "sampler": sampler, "steps": steps, "seed": seed, "labels": str(labels),
                           "guidance_scale": guidance, "weights_sha256": weights})
            export(pipe, str(out), "npz", num_images, labels, steps, guidance, seed, key,
                   provenance=sample_provenance(source, weights))
            with np.load(out, allow_pickle=False) as npz:
                images = npz["train_images"]
            grid = square_grid([Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
                                for image in images])
            grid.save(out.with_name("grid.png"))
        return str(out.with_name("grid.png")), str(out)

    def card_markdown(self):
        """The card's numbers with their baselines, from the results saved with the model."""
        from .model_card import metrics_table, read_results, trust_section
        from .privacy import privacy_guarantee, privacy_section

        results = read_results(self.folder)
        quality = (metrics_table(results["evaluation"]) if results["evaluation"] else
                   "Not evaluated yet: `medgen evaluate PIPELINE --out PIPELINE/evaluation.json`.")
        return "\n\n".join([
            f"Weights sha256 `{self.weights[:16]}...`; results whose recorded weights differ are not shown.",
            "### Quality (FID/KID beside the real-vs-real floor)", quality,
            "### Differential privacy", privacy_section(privacy_guarantee(self.folder)),
            "### Privacy audit and utility", trust_section(results["audit"], results["utility"],
                                                           results["reader_study"])])

    def closest_pairs(self):
        """(figure path or None, why): real training images are shown only for a public dataset."""
        figure = self.folder / CLOSEST_PAIRS
        if self.public_dataset is None:
            return None, ("This model was trained on your own data: the audit's closest-pairs figure shows real "
                          "training images, so the demo never shows it. Read audit.json's numbers above instead.")
        if not figure.is_file():
            return None, (f"No closest-pairs figure saved with this model: `medgen audit PIPELINE` writes "
                          f"{CLOSEST_PAIRS} beside its audit.json.")
        return str(figure), (f"The synthetic images closest to a training image (top row) above that training image "
                             f"(bottom row); {self.public_dataset} is a public dataset.")


def reader_tab(gr, session):
    """The "Reader study" tab: the image (enlarged, nearest neighbour), the reader's answer, progress."""
    from .reader_study import StudyError

    display = max(1, 320 // session.study["size"])

    def show(reader):
        reader = (reader or "").strip()
        if not reader:
            raise gr.Error("Enter your name (or a reader code) first: answers are scored per reader.")
        item, pixels, done, total = session.next_item(reader)
        if item is None:
            return None, None, f"**Done**: all {total} images answered. Thank you."
        return item, pixels.repeat(display, 0).repeat(display, 1), f"Image {done + 1} of {total}"

    def answer(reader, item, choice, confidence, class_name):
        if item is None:
            raise gr.Error("Press 'Start / resume' first.")
        try:
            session.record(reader, item, choice, confidence, class_name)
        except StudyError as error:
            raise gr.Error(str(error)) from None
        return show(reader)

    with gr.Tab("Reader study"):
        gr.Markdown("Real or synthetic? Each image is either a real image of the data set or one generated by the "
                    "model, half and half, in random order. Answer what you think, with how sure you are.")
        reader = gr.Textbox(label="Your name or reader code")
        start = gr.Button("Start / resume")
        progress = gr.Markdown()
        image = gr.Image(label="Image", type="numpy", interactive=False, format="png", buttons=["fullscreen"])  # zoom
        choice = gr.Radio(["real", "synthetic"], label="This image is")
        confidence = gr.Slider(1, 5, value=3, step=1, label="Confidence (1 = a guess, 5 = certain)")
        class_name = gr.Dropdown([""] + session.class_names, value="", label="Class (optional)",
                                 visible=bool(session.class_names))
        submit = gr.Button("Submit and next", variant="primary")
        current = gr.State(None)  # the item's id: server-side state, never sent to the browser
        start.click(show, [reader], [current, image, progress], api_name="reader_start")
        submit.click(answer, [reader, current, choice, confidence, class_name], [current, image, progress],
                     api_name="reader_answer")


def build_app(pipeline=None, device="auto", study=None):
    """The Gradio Blocks of the demo for a pipeline folder, Hub repo id, or (None) the shipped model; ``study``: a
    reader study folder for the "Reader study" tab."""
    gr = require_gradio()
    demo = Demo(pipeline, device)
    session = None
    if study is not None:
        from .reader_study import ReaderSession

        session = ReaderSession(study)
    from .runtime import source_name

    def generate(class_choice, sampler, steps, guidance_scale, seed, num_images):
        try:
            return demo.generate(class_choice, sampler, steps, guidance_scale, seed, num_images)
        except ValueError as error:  # ours say what to fix; shown in the page, the server goes on
            raise gr.Error(str(error)) from None

    conditional = bool(demo.class_names)
    with gr.Blocks(title="medgen-diffusers") as blocks:
        what = f"{len(demo.class_names)} classes" if conditional else "unconditional"
        gr.Markdown(f"# medgen-diffusers: synthetic {demo.public_dataset or ''} images ({what})\n"
                    f"Model: `{source_name(pipeline)}`. Synthetic images for research and augmentation, "
                    "**not for diagnosis**.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    class_choice = gr.Dropdown([ALL_CLASSES] + demo.class_names, value=ALL_CLASSES, label="Class",
                                               visible=conditional)
                    sampler = gr.Dropdown(demo.samplers, value=SAVED_SAMPLER,
                                          label=f"Sampler ({SAVED_SAMPLER}: {type(demo.saved_scheduler).__name__})")
                    steps = gr.Slider(1, max(100, demo.default_steps()), value=demo.default_steps(), step=1,
                                      label="Steps")
                    guidance = gr.Slider(0.0, 5.0, value=1.0, step=0.1, label="Guidance (1 = none)",
                                         visible=conditional)
                    seed = gr.Number(0, precision=0, label="Seed")
                    num_images = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="Images")
                    button = gr.Button("Generate", variant="primary")
                with gr.Column():
                    grid = gr.Image(label="Synthetic images", type="filepath", format="png")
                    npz = gr.File(label="MedMNIST-layout npz (train_images, train_labels, provenance)")
            # Choosing the 4-step model (or back) sets the steps to that model's own default.
            sampler.change(lambda name: demo.default_steps(name), sampler, steps, api_visibility="private")
            button.click(generate, [class_choice, sampler, steps, guidance, seed, num_images], [grid, npz],
                         api_name="generate")
        if session is not None:
            reader_tab(gr, session)
        with gr.Tab("Model card"):
            gr.Markdown(demo.card_markdown())
            figure, why = demo.closest_pairs()
            gr.Markdown(why)
            if figure:
                gr.Image(figure, label="Closest pairs (audit)", interactive=False)
    return blocks


def launch(pipeline=None, host="127.0.0.1", port=None, device="auto", share=False, study=None):
    """Serve the demo until interrupted (``medgen app``; Spaces set GRADIO_SERVER_NAME/PORT themselves). A reader
    study of private data shows real patient images: served to this machine only."""
    if study is not None:
        from .reader_study import ReaderSession

        if ReaderSession(study).study.get("private") and (share or host not in ("127.0.0.1", "localhost")):
            raise ValueError(f"{study} shows real images of private data: it is served on 127.0.0.1 only, to readers "
                             "at this machine; drop --share / --host (for readers elsewhere, use a public data set's "
                             "model or your institution's approved viewer).")
    build_app(pipeline, device, study).launch(server_name=host, server_port=port, share=share, show_error=True)
