"""Hugging Face Spaces entry point: the medgen-diffusers web demo (medgen_diffusers/app.py).

Push this folder as a Gradio Space (README.md's front matter says so). MEDGEN_PIPELINE names the model to serve: a
Hub repo id or a folder inside the Space; unset, the BloodMNIST model shipped with the package. Locally, the same
demo is `medgen app PIPELINE`.
"""

import os

from medgen_diffusers.app import launch

if __name__ == "__main__":
    # Spaces set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; launch() passes None, so Gradio reads them.
    launch(os.environ.get("MEDGEN_PIPELINE") or None, host=None, port=None)
