import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    ImagePipelineOutput,
    UniPCMultistepScheduler,
)

from medgen_diffusers import BloodMNISTPipeline


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_unconditional_output_types(unconditional_pipe):
    out = unconditional_pipe(batch_size=2, num_inference_steps=3, generator=seeded())
    assert isinstance(out, ImagePipelineOutput) and len(out.images) == 2
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (28, 28)
    np_images = unconditional_pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="np").images
    assert np_images.shape == (2, 28, 28, 3) and 0.0 <= np_images.min() and np_images.max() <= 1.0
    pt_images = unconditional_pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="pt").images
    assert pt_images.shape == (2, 3, 28, 28)
    np.testing.assert_allclose(pt_images.permute(0, 2, 3, 1).numpy(), np_images)
    (tuple_images,) = unconditional_pipe(batch_size=1, num_inference_steps=2, return_dict=False)
    assert len(tuple_images) == 1


def test_same_seed_same_images_other_seed_other_images(conditional_pipe):
    a = conditional_pipe(batch_size=4, num_inference_steps=5, generator=seeded(1), output_type="np").images
    b = conditional_pipe(batch_size=4, num_inference_steps=5, generator=seeded(1), output_type="np").images
    c = conditional_pipe(batch_size=4, num_inference_steps=5, generator=seeded(2), output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_class_labels_by_index_and_name_agree(conditional_pipe):
    by_index = conditional_pipe(class_labels=[0, 7, 3], num_inference_steps=4, generator=seeded(), output_type="np")
    by_name = conditional_pipe(class_labels=["basophil", "platelet", "immature granulocytes"], num_inference_steps=4,
                               generator=seeded(), output_type="np")
    np.testing.assert_array_equal(by_index.images, by_name.images)
    assert by_index.images.shape[0] == 3
    other = conditional_pipe(class_labels=[1, 7, 3], num_inference_steps=4, generator=seeded(), output_type="np")
    assert not np.array_equal(other.images[0], by_index.images[0])  # the label reaches the UNet
    single = conditional_pipe(batch_size=2, class_labels="platelet", num_inference_steps=4, generator=seeded(),
                              output_type="np")
    assert single.images.shape[0] == 2


def test_classifier_free_guidance_changes_the_images(conditional_pipe):
    kwargs = dict(class_labels=[2, 5], num_inference_steps=4, output_type="np")
    plain = conditional_pipe(generator=seeded(), **kwargs).images
    guided_one = conditional_pipe(generator=seeded(), guidance_scale=1.0, **kwargs).images
    guided = conditional_pipe(generator=seeded(), guidance_scale=3.0, **kwargs).images
    np.testing.assert_array_equal(plain, guided_one)
    assert not np.allclose(plain, guided)


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(output_type="tensor"), "output_type"),
        (dict(class_labels=[[0, 1]]), "ints or class names"),
        (dict(class_labels=8), "out of range"),
        (dict(class_labels=-1), "out of range"),
        (dict(class_labels="red cell"), "Unknown class name"),
        (dict(class_labels=[0, 1], batch_size=3), "one label per image"),
        (dict(class_labels=1.5), "ints or class names"),
        (dict(latents=torch.zeros(1, 3, 32, 32)), "latents must have shape"),
    ],
)
def test_bad_arguments_conditional(conditional_pipe, call, message):
    with pytest.raises(ValueError, match=message):
        conditional_pipe(num_inference_steps=call.pop("num_inference_steps", 2), **call)


@pytest.mark.parametrize(
    "call, message",
    [(dict(class_labels=[0]), "unconditional"), (dict(guidance_scale=2.0), "unconditional")],
)
def test_bad_arguments_unconditional(unconditional_pipe, call, message):
    with pytest.raises(ValueError, match=message):
        unconditional_pipe(num_inference_steps=2, **call)


def test_class_names_must_match_the_unet(conditional_pipe):
    with pytest.raises(ValueError, match="class_names"):
        BloodMNISTPipeline(conditional_pipe.unet, conditional_pipe.scheduler, ["a", "b"])


@pytest.mark.parametrize(
    "scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler]
)
def test_scheduler_swap(conditional_pipe, scheduler_cls):
    conditional_pipe.scheduler = scheduler_cls.from_config(conditional_pipe.scheduler.config)
    images = conditional_pipe(batch_size=2, num_inference_steps=5, generator=seeded(), output_type="np").images
    assert images.shape == (2, 28, 28, 3) and np.isfinite(images).all()
    assert len(conditional_pipe.scheduler.timesteps) == 5


def test_intermediate_frames_through_the_callback(conditional_pipe):
    frames = []

    def keep(pipe, step_index, timestep, callback_kwargs):
        frames.append((int(timestep), callback_kwargs["latents"].clone()))
        return callback_kwargs

    x_T = torch.randn(2, 3, 28, 28, generator=seeded())
    final = conditional_pipe(batch_size=2, latents=x_T, num_inference_steps=6, callback_on_step_end=keep,
                             output_type="pt").images
    assert [t for t, _ in frames] == conditional_pipe.scheduler.timesteps.tolist()
    torch.testing.assert_close((frames[-1][1] / 2 + 0.5).clamp(0, 1), final)


def test_save_load_round_trip_is_bit_exact(conditional_pipe, tmp_path):
    conditional_pipe.save_pretrained(tmp_path)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "unet/diffusion_pytorch_model.safetensors" in files and "pipeline_bloodmnist.py" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    loaded = BloodMNISTPipeline.from_pretrained(tmp_path)
    assert type(loaded) is BloodMNISTPipeline
    assert loaded.config.class_names == conditional_pipe.config.class_names
    for name, tensor in conditional_pipe.unet.state_dict().items():
        assert torch.equal(tensor, loaded.unet.state_dict()[name]), name
    loaded.set_progress_bar_config(disable=True)
    a = conditional_pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="np").images
    b = loaded(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="np").images
    np.testing.assert_array_equal(a, b)


LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import sys
    for blocked in ("medgen_diffusers", "pipelines"):
        sys.modules[blocked] = None  # importing them now raises ImportError
    import numpy as np, torch
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.save(sys.argv[2], images)
    print(type(pipe).__module__, type(pipe).__name__)
    """
)


def load_without_package(source, out, env, cwd):
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PACKAGE, str(source), str(out)], capture_output=True,
                            text=True, env=env, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_loads_with_plain_diffusers_without_our_package(conditional_pipe, tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    conditional_pipe.save_pretrained(saved)
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    kind = load_without_package(saved, tmp_path / "out.npy", env, cwd=tmp_path)
    assert kind.startswith("diffusers_modules") and kind.endswith("BloodMNISTPipeline")
    expected = conditional_pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def write_hub_cache(saved: Path, hub_cache: Path, repo_id: str) -> None:
    """Lay out `saved` exactly as huggingface_hub caches a downloaded model repo (refs + snapshots)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    import shutil

    shutil.copytree(saved, repo_dir / "snapshots" / commit)


def test_loads_from_a_hub_repo_id_in_the_local_cache(conditional_pipe, tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    conditional_pipe.save_pretrained(saved)
    hf_home = tmp_path / "hf"
    write_hub_cache(saved, hf_home / "hub", "medgen/bloodmnist-test")
    env = {**__import__("os").environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    load_without_package("medgen/bloodmnist-test", tmp_path / "out.npy", env, cwd=tmp_path)
    expected = conditional_pipe(batch_size=2, num_inference_steps=3, generator=seeded(), output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    # ... and through our own class, in this process
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = BloodMNISTPipeline.from_pretrained("medgen/bloodmnist-test", cache_dir=hf_home / "hub")
    assert type(loaded) is BloodMNISTPipeline
    assert json.loads((saved / "model_index.json").read_text())["_class_name"] == [
        "pipeline_bloodmnist", "BloodMNISTPipeline"]


def test_progressive_frames_go_from_noise_to_the_final_image(conditional_pipe):
    from medgen_diffusers.figures import progressive_figure, progressive_frames

    frames = progressive_frames(conditional_pipe, batch_size=3, keep_timesteps=(810, 390, 0),
                                generator=seeded(3), num_inference_steps=10)
    assert list(frames) == ["x_T", "t=800", "t=400", "t=0", "x_0"]  # nearest visited timesteps, noise first
    assert all(len(column) == 3 for column in frames.values())
    generator = seeded(3)  # x_T first, then DDPM's per-step noise: the order progressive_frames draws them in
    x_T = torch.randn(3, 3, 28, 28, generator=generator)
    direct = conditional_pipe(batch_size=3, latents=x_T, generator=generator, num_inference_steps=10,
                              output_type="np").images
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in frames["x_0"]]),
                                  np.stack(conditional_pipe.numpy_to_pil(direct)))
    figure = progressive_figure(frames)
    assert figure.size == (5 * 28, 3 * 28)


def test_batch_size_follows_the_given_latents(unconditional_pipe):
    latents = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    images = unconditional_pipe(latents=latents, num_inference_steps=2, output_type="np").images
    assert images.shape == (3, 28, 28, 3)


# diffusers' shared pipeline conventions -----------------------------------------------------------------------------
def test_latent_output_is_the_unclamped_model_range_x0(conditional_pipe):
    kwargs = dict(class_labels=[1, 6], num_inference_steps=4)
    latent = conditional_pipe(generator=seeded(), output_type="latent", **kwargs).images
    pt = conditional_pipe(generator=seeded(), output_type="pt", **kwargs).images
    assert latent.shape == (2, 3, 28, 28) and latent.min() < 0  # model range [-1, 1], not [0, 1]
    torch.testing.assert_close((latent / 2 + 0.5).clamp(0, 1), pt)


def test_callback_reads_call_state_and_turns_guidance_off_mid_run(conditional_pipe):
    unet_batches, seen = [], []
    hook = conditional_pipe.unet.register_forward_hook(lambda module, args, out: unet_batches.append(len(args[0])))

    def guidance_off_after_two(pipe, step_index, timestep, callback_kwargs):
        seen.append((pipe.num_timesteps, pipe.guidance_scale, pipe.do_classifier_free_guidance))
        if step_index == 1:
            pipe._guidance_scale = 1.0
        return callback_kwargs

    kwargs = dict(class_labels=[2, 5], num_inference_steps=5, output_type="np")
    switched = conditional_pipe(generator=seeded(), guidance_scale=3.0, callback_on_step_end=guidance_off_after_two,
                                **kwargs).images
    hook.remove()
    assert seen[:2] == [(5, 3.0, True)] * 2 and seen[2:] == [(5, 1.0, False)] * 3
    assert unet_batches == [4, 4, 2, 2, 2]  # (conditional, null) pairs only while guiding
    always = conditional_pipe(generator=seeded(), guidance_scale=3.0, **kwargs).images
    never = conditional_pipe(generator=seeded(), **kwargs).images
    assert not np.allclose(switched, always) and not np.allclose(switched, never)


def test_batched_one_label_lists_and_neutral_guidance(conditional_pipe, unconditional_pipe):
    kwargs = dict(num_inference_steps=3, output_type="np")
    nested = conditional_pipe(class_labels=[[1], [7], ["platelet"]], generator=seeded(), **kwargs).images
    flat = conditional_pipe(class_labels=[1, 7, 7], generator=seeded(), **kwargs).images
    np.testing.assert_array_equal(nested, flat)
    neutral = unconditional_pipe(batch_size=2, guidance_scale=1.0, generator=seeded(), **kwargs).images
    np.testing.assert_array_equal(neutral, unconditional_pipe(batch_size=2, generator=seeded(), **kwargs).images)
