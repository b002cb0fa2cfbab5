"""The ``medgen`` command line (``medgen <command> --help`` for each):

  train     train a pipeline (train_unconditional.py), e.g. with --dp_epsilon for differential privacy
  distill   distil a few-step student (distill_lcm.py)
  train-vae train an AutoencoderKL (vae.py), the first stage of latent diffusion (`medgen train --vae`)
  sample    generate images: a PNG grid, a MedMNIST-layout npz, a folder per class, or a saved datasets.Dataset
  evaluate  FID/KID (standard + the seed's 64-d protocol) with the real-vs-real floor, as JSON
  audit     copies and membership inference against the training images, beside held-out real baselines
  utility   TSTR/TRTR: a classifier trained on synthetic images, scored on real ones
  figures   loss / FID / KID curves, progressive generation and per-class grids of a training run
  card      (re)write a pipeline folder's model card, with its evaluation when present
  push      upload a pipeline folder to the Hugging Face Hub in one commit
  app       the web demo (Gradio; the [app] extra): generate, download an npz, read the model's numbers
  data      locate, verify (MD5) and summarise a MedMNIST dataset
  prepare   decode a data source once into a memory-mapped store (--dataset STORE for every command)
  reader-study  create a blinded real-vs-synthetic study (readers answer in `medgen app --study`), score it

Exit codes: 0 success, 2 bad arguments or inputs (one line on stderr saying what and how to fix it), 3 network or
Hub failures, 1 (with a traceback) anything else: a bug, or the machine (e.g. CUDA out of memory). ``medgen train``,
``medgen distill`` and ``medgen train-vae`` are the training scripts (``train.py``, ``distill.py``, ``vae.py``) with
their own arguments.

Each ``cmd_*`` wires a command's arguments to the module that does the work (``scoring`` for evaluate, ``audit``,
``utility``, ``export``, ...; ``runtime`` resolves the pipeline, device, data source and output paths they share).
It is over ~400 lines because the argument parser of ten commands, with their help texts, lives here in one place.
"""

import argparse
import sys
from pathlib import Path

from .runtime import (SCHEDULERS, ArgumentParser, data_record, default_result_path, device_name, is_shipped, load_pipeline,
                      process_state, resolve_data, resolve_device, resolve_steps, source_name, source_options,
                      split_counts, writable)


def cmd_sample(args):
    from .export import export, infer_format, run_key, sample_provenance
    from .generation import default_chunk_size, plan_labels
    from .provenance import read_run_config, weights_sha256

    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1; got {args.num_images}.")
    if args.fast:
        args.pipeline = fast_model(args.pipeline)
    fmt = infer_format(args.out, args.format)
    writable(args.out)
    device = resolve_device(args.device)
    state = process_state(device)
    if state is not None and device.type == "cuda":
        device = state.device  # one GPU per process
    pipe = load_pipeline(args.pipeline, args.scheduler).to(device)
    args.chunk_size = args.chunk_size or default_chunk_size(pipe)  # in the run key: a resume reuses only equal chunks
    counts = None
    if args.like_split:  # the class mix of the data the model was trained on (or of --dataset)
        resolve_data(args, args.pipeline)
        counts = split_counts(args.like_split, args)
    labels = plan_labels(pipe.config.class_names, args.num_images, args.class_name, args.balanced, counts)
    weights = weights_sha256(pipe.unet)
    # The device does not change the images; the weights do: parts of another model's run are never reused.
    key = run_key({**{k: v for k, v in vars(args).items() if k not in ("device", "source_options")},
                   "weights_sha256": weights})
    run = read_run_config(args.pipeline) or {}
    summary = export(pipe, args.out, fmt, args.num_images, labels, resolve_steps(pipe, args.steps),
                     args.guidance_scale, args.seed, key, args.chunk_size, state=state,
                     provenance=sample_provenance(args.pipeline, weights, args.precision), intensity=run.get("intensity"),
                     bit_depth=run.get("bit_depth") or 8,  # a model of 16-bit data writes 16-bit PNG/DICOM
                     precision=args.precision)
    if summary:
        print(summary)
        if args.fast:
            print(fast_note())


def fast_note():
    """What --fast trades, from the two shipped models' own test evaluations."""
    import json

    from . import DEFAULT_MODEL, FAST_MODEL

    fid, nfe, utility = {}, {}, {}
    for name, folder in (("fast", FAST_MODEL), ("default", DEFAULT_MODEL)):
        evaluation = json.loads(Path(folder, "evaluation.json").read_text())
        fid[name], nfe[name] = evaluation["standard"]["fid"], evaluation["generation"]["nfe_per_image"]
        path = Path(folder, "utility.json")
        utility[name] = json.loads(path.read_text()) if path.is_file() else None
    note = (f"the shipped 4-step model: test FID {fid['fast']:.2f} at {nfe['fast']} network evaluations per image, "
            f"the default model {fid['default']:.2f} at {nfe['default']} ({fid['fast'] / fid['default']:.2f}x the "
            f"FID, {nfe['default'] / nfe['fast']:.0f}x fewer evaluations)")
    if not all(utility.values()):
        return note
    tstr = {name: result["arms"]["tstr"] for name, result in utility.items()}
    ratio = {name: result["tstr_ratio"]["acc"] for name, result in utility.items()}
    note += (f"; utility (a ResNet-18 trained on its images, tested on real ones): TSTR/TRTR ACC {ratio['fast']:.3f} "
             f"(TSTR {tstr['fast']['acc_mean']:.3f} +- {tstr['fast']['acc_std']:.3f}, {len(tstr['fast']['runs'])} seeds) "
             f"vs the default model's {ratio['default']:.3f} (TSTR {tstr['default']['acc_mean']:.3f} +- "
             f"{tstr['default']['acc_std']:.3f})")
    # Outside both seeds' spread: say which model serves a classifier's training set better.
    if tstr["fast"]["acc_mean"] + tstr["fast"]["acc_std"] < tstr["default"]["acc_mean"] - tstr["default"]["acc_std"]:
        note += (". For a training set (augmentation, TSTR) the default model's images are clearly better: sample "
                 "without --fast (5x the time)")
    return note


def fast_model(pipeline):
    """--fast: the shipped 4-step student, in place of the shipped teacher."""
    from . import FAST_MODEL

    if pipeline is not None:
        raise ValueError("--fast picks the shipped 4-step model; drop it, or the PIPELINE argument (a distilled "
                         "pipeline of your own is fast by itself: its saved sampler and steps are used).")
    if not Path(FAST_MODEL, "model_index.json").is_file():
        raise FileNotFoundError(f"The 4-step model is not in this installation ({FAST_MODEL}); reinstall "
                                "medgen-diffusers, or sample the default model without --fast.")
    return FAST_MODEL


def cmd_evaluate(args):
    from .scoring import evaluate_command

    evaluate_command(args)


def _public(result):
    """A result without this machine's absolute paths (results are committed and pushed beside the model)."""
    from .provenance import redact_paths

    return redact_paths(result)


def cmd_audit(args):
    from .audit import run_audit
    from .provenance import write_json_atomic as write_json
    from .provenance import check_new_result, is_public_source, provenance

    out = check_new_result(writable(args.out or default_result_path(args.pipeline, "audit.json")), args.overwrite)
    data = resolve_data(args, args.pipeline)
    # The closest-pairs figure shows real training images: for a public dataset it goes beside --out by default;
    # for the user's own data only where --figure asks for it.
    figure = args.figure
    if figure is None:
        figure = str(out.with_name(out.stem + "_closest_pairs.png")) if is_public_source(args.dataset) else ""
    figure = check_new_result(writable(figure, "--figure"), args.overwrite, "--figure") if figure else None
    device = resolve_device(args.device)
    pipe = load_pipeline(args.pipeline, args.scheduler).to(device)
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    extractor = None
    if "inception" in spaces:
        from .inception import InceptionFeatures

        extractor = InceptionFeatures(device=device)
    # Members are the images the model trained on: the first --max_train_samples of the split, when its run cut it.
    num_trained = None if data.explicit else (data.run_config or {}).get("max_train_samples")
    result = run_audit(pipe, data, args.num_samples, args.num_train, args.num_test, args.num_mia, spaces,
                       resolve_steps(pipe, args.steps), args.guidance_scale, args.seed, extractor, figure,
                       num_trained=num_trained, precision=args.precision)
    result["source"] = source_name(args.pipeline)
    result["device"] = device_name(device)
    result["provenance"] = provenance(pipe.unet, data_record(data, args, pipe.image_size))
    write_json(_public(result), out)
    for space, stats in result["nearest_neighbours"].items():
        print(f"{space:9s} copy rate {stats['copy_rate']['synthetic']:.4f} (test baseline "
              f"{stats['copy_rate']['test']:.4f}); Gu memorized {stats['memorized_gu']['synthetic']:.4f} (test "
              f"{stats['memorized_gu']['test']:.4f}); median NN distance {stats['median_nn_distance']['synthetic']:.3f}"
              f" (test {stats['median_nn_distance']['test']:.3f})")
    mia = result["membership_inference"]
    low, high = mia["auc_ci95"]
    print(f"membership inference: AUC {mia['auc']:.4f} (95 % CI {low:.3f}-{high:.3f}; 0.5 = nothing learned), "
          f"TPR@1%FPR {mia['tpr_at_1pct_fpr']:.4f}")
    for verdict in result["verdict"].values():
        print(f"verdict: {verdict}")
    print(f"wrote {out}" + (f" and {figure} (real training images: keep it private unless the data is public)"
                            if figure else ""))


def cmd_utility(args):
    from .provenance import write_json_atomic as write_json
    from .provenance import check_new_result, provenance
    from .utility import run_utility

    out = writable(args.out or default_result_path(args.pipeline, "utility.json"))
    if args.merge:
        from .utility import merge_utility

        if args.pipeline or args.seeds:
            raise ValueError("--merge combines result files and runs no pipeline: drop the pipeline and --seeds.")
        if any(Path(path).resolve() == out.resolve() for path in args.merge):
            raise ValueError(f"--out {out} is one of the --merge inputs: write the merge to a new file so no "
                             "per-seed result is lost.")
    check_new_result(out, args.overwrite)
    if args.merge:
        result = merge_utility([read_json(path, "--merge") for path in args.merge])
        result["source"] = "merged: " + ", ".join(Path(path).name for path in args.merge)
        write_json(result, out)
        print_utility(result, out)
        return
    seeds = parse_seeds(args.seeds) if args.seeds else list(range(args.num_seeds))
    data = resolve_data(args, args.pipeline)
    device = resolve_device(args.device)
    pipe = load_pipeline(args.pipeline, args.scheduler).to(device)
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    result = run_utility(pipe, data, args.num_train, fractions, seeds, args.epochs, resolve_steps(pipe, args.steps),
                         args.guidance_scale, device, args.seed, split=args.split,
                         arms=[a.strip() for a in args.arms.split(",") if a.strip()] or None, precision=args.precision)
    result["source"] = source_name(args.pipeline)
    result["device"] = device_name(device)
    result["provenance"] = provenance(pipe.unet, data_record(data, args, pipe.image_size))
    write_json(_public(result), out)
    print_utility(result, out)


def print_utility(result, out):
    for name, arm in result["arms"].items():
        print(f"{name:14s} ACC {arm['acc_mean']:.4f} +- {arm['acc_std']:.4f}  AUC {arm['auc_mean']:.4f} +- "
              f"{arm['auc_std']:.4f}  ({arm['runs'][0]['num_images']} images, seeds {[r['seed'] for r in arm['runs']]})")
    print(f"TSTR/TRTR ratio: ACC {result['tstr_ratio']['acc']:.3f}, AUC {result['tstr_ratio']['auc']:.3f}")
    print(f"wrote {out}")


def read_json(path, option):
    import json

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{option} {path}: no such file; give the JSON files that `medgen utility --out` wrote.")
    except json.JSONDecodeError as error:
        raise ValueError(f"{option} {path}: not JSON ({error}); give the files that `medgen utility --out` wrote.")


def parse_seeds(text):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(seeds) != len(set(seeds)):
        raise ValueError(f"--seeds {text!r}: give distinct integers separated by commas, e.g. --seeds 1,2.")
    return seeds


def cmd_figures(args):
    from . import DEFAULT_MODEL
    from .figures import write_run_figures

    run_dir = args.run_dir or DEFAULT_MODEL
    # Default: the run's own folder; for the shipped model (read-only), the current directory.
    out_dir = writable(args.out_dir or ("." if is_shipped(run_dir) else run_dir), "--out-dir")
    written = write_run_figures(run_dir, data_root=args.data_root, seed=args.seed, num_inference_steps=args.steps,
                                out_dir=out_dir, device=resolve_device(args.device), show_real=args.show_real)
    print(f"wrote {', '.join(written)} to {out_dir}")


def cmd_card(args):
    from .model_card import write_card

    path = write_card(writable(args.pipeline_dir, "PIPELINE_DIR"), repo_id=args.repo_id,
                      description=args.description, citation=args.citation)
    print(f"wrote {path}")


def cmd_push(args):
    from .hub import push_operations, push_pipeline, repo_visibility

    private, why = repo_visibility(args.pipeline_dir, args.private)
    visibility = f"a {'private' if private else 'public'} repository ({why})"
    if args.dry_run:
        operations = push_operations(args.pipeline_dir)
        print(f"would send {len(operations)} files from {args.pipeline_dir} to {args.repo_id} as {visibility} "
              "(nothing was sent):")
        for operation in operations:
            print(f"  {operation.path_in_repo}")
        return
    url = push_pipeline(args.pipeline_dir, args.repo_id, token=args.token, private=private)
    print(f"pushed {args.pipeline_dir} to {url}, {visibility}")


def cmd_prepare(args):
    import time

    from .data.store import prepare, read_manifest

    started = time.perf_counter()
    store = prepare(args.source, writable(args.out), args.resolution, args.data_root, args.workers,
                    **source_options(args))
    manifest = read_manifest(store)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    print(f"prepared {store}: {counts} images at {manifest['resolution']} px, {manifest['channels']} channel(s), "
          f"{len(manifest['class_names'] or [])} classes, in {time.perf_counter() - started:.1f} s; train with "
          f"--dataset {store}")


def cmd_app(args):
    from .app import launch

    launch(args.pipeline, args.host, args.port, args.device, args.share, args.study)


def cmd_reader_study(args):
    from .reader_study import create_study, publish_summary, score_study, study_summary

    if args.action == "score":
        result = score_study(args.study)
        print(study_summary(result))
        published = publish_summary(args.study, result)
        print(f"wrote {Path(args.study) / 'results.json'} and results.png"
              + (f"; the pooled numbers (no reader names) to {published} for the model card" if published else ""))
        return
    from .provenance import is_public_source, provenance

    if args.split == "train" and not args.include_training_images:
        raise ValueError("--split train shows readers images the model was trained on (a model that copies would "
                         "look perfect): use the held-out test or val split, or pass --include-training-images.")
    writable(args.out)
    data = resolve_data(args, args.pipeline)
    device = resolve_device(args.device)
    pipe = load_pipeline(args.pipeline, args.scheduler).to(device)
    size = pipe.image_size
    real = data.load(args.split, size)
    record = provenance(pipe.unet, data_record(data, args, size), pipeline=source_name(args.pipeline))
    local = args.pipeline is not None and Path(args.pipeline).is_dir() and not is_shipped(args.pipeline)
    study = create_study(pipe, real, args.num_images, args.out, args.seed, args.balanced, resolve_steps(pipe, args.steps),
                         args.guidance_scale, record, private=not is_public_source(args.dataset), split=args.split,
                         pipeline_folder=str(Path(args.pipeline).resolve()) if local else None, precision=args.precision)
    print(f"wrote a study of {study['num_images']} images ({study['num_images'] // 2} real from the {args.split} split, "
          f"{study['num_images'] // 2} synthetic) to {args.out}; readers answer in `medgen app "
          f"{args.pipeline or ''} --study {args.out}`".replace("  ", " ") + f", then `medgen reader-study score {args.out}`")


def cmd_data(args):
    from .data.medmnist import _read_split, load_medmnist_tensors, medmnist_path

    for split in ("train", "val", "test"):
        data = load_medmnist_tensors(args.dataset, split, args.size, args.root, download=not args.no_download)
        if data.labels is not None:
            counts = data.labels.bincount(minlength=len(data.class_names)).tolist()
            print(f"{split}: {len(data)} images {tuple(data.images.shape[1:])}, per class {counts}")
        else:  # multi-label (ChestMNIST): how many images carry each finding
            _, labels = _read_split(medmnist_path(args.dataset, args.size, args.root, download=False), split)
            print(f"{split}: {len(data)} images {tuple(data.images.shape[1:])}, multi-label: images per finding "
                  f"{labels.sum(axis=0).tolist()}")
    from .data import class_names

    print("classes: " + "; ".join(f"{i}={name}" for i, name in enumerate(class_names(args.dataset))))
    print(f"md5 {data.md5} (verified)")


def add_data_options(p):
    p.add_argument("--dataset", default=None,
                   help="Real data to compare with (default: the data the model was trained on, from its "
                        "run_config.json): a MedMNIST 2D flag, a folder of images (sub-folder per class), a "
                        "MedMNIST-layout .npz, or a datasets dataset (save_to_disk folder or Hub name).")
    p.add_argument("--data-root", default=None, help="Folder holding MedMNIST .npz files.")
    add_source_options(p)


def add_source_options(p):
    """How a source is read: datasets columns, DICOM/NIfTI windows, slices, splits and patients."""
    p.add_argument("--image-column", default=None, help="Image column of a datasets dataset (default: the run's, "
                                                        "else 'image').")
    p.add_argument("--label-column", default=None, help="Label column of a datasets dataset ('none': unlabeled; "
                                                        "default: the run's, else 'label').")
    g = p.add_argument_group("DICOM / NIfTI sources (default: as the model's run read them)")
    g.add_argument("--window", default=None, help="Intensity window C,W or a preset (lung, bone, soft-tissue, ...).")
    g.add_argument("--slice-axis", dest="slice_axis", default=None, choices=("axial", "coronal", "sagittal"))
    g.add_argument("--slice-range", dest="slice_range", default=None, help="NIfTI slices START:STOP.")
    g.add_argument("--split-by", dest="split_by", default=None, choices=("patient",),
                   help="Patient-level train/val/test splits of a folder without split sub-folders.")
    g.add_argument("--split-seed", dest="split_seed", type=int, default=None, help="Seed of --split-by.")
    g.add_argument("--patient-column", dest="patient_column", default=None,
                   help="datasets sources: the column naming each image's patient.")
    g.add_argument("--patient-regex", dest="patient_regex", default=None,
                   help="Pattern whose first group (or whole match) in a DICOM/NIfTI file's path is its patient.")
    p.add_argument("--crop", default=None, choices=("center", "pad", "resize"),
                   help="Non-square images: center (default), pad (black borders) or resize (stretch); default: the "
                        "run's.")
    p.add_argument("--bit-depth", dest="bit_depth", type=int, default=None, choices=(8, 16),
                   help="16: keep 16-bit sources at 16 bits (a store of uint16 images; default: the run's, else 8).")
    p.add_argument("--max-train-samples", dest="max_train_samples", type=int, default=None,
                   help="Only a seeded subset of N train images, chosen before decoding (default: the run's).")


def build_parser():
    parser = ArgumentParser(prog="medgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every sub-command's parser is an ArgumentParser too: a mistyped option gets its usage and a "did you mean".
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    # Listed for --help; main() hands their arguments to the scripts' own parsers before this parser runs.
    commands.add_parser("train", help="Train a pipeline (train_unconditional.py; `medgen train --help`).")
    commands.add_parser("distill", help="Distil a few-step student (distill_lcm.py; `medgen distill --help`).")
    commands.add_parser("train-vae", help="Train an AutoencoderKL for latent diffusion (`medgen train-vae --help`).")

    def add_generation_options(p):
        p.add_argument("--scheduler", default=None, choices=sorted(SCHEDULERS),
                       help="Swap in this diffusers scheduler (default: the pipeline's own).")
        p.add_argument("--steps", type=int, default=None,
                       help="Denoising steps (default: the pipeline's saved default, else 1000).")
        p.add_argument("--guidance-scale", type=float, default=None, help="Classifier-free guidance (conditional).")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                       help="The network passes: fp32 (default: bit-reproducible, the published numbers) or bf16 "
                            "(torch.autocast + channels-last: ~2-3x faster on CPUs with AMX/AVX512-BF16 and on "
                            "GPUs; recorded in the result).")
        add_data_options(p)
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                       help="Where to run (auto: CUDA, else MPS, else CPU).")

    sample = commands.add_parser("sample", help="Generate images: PNG grid, MedMNIST npz, class folders, datasets.")
    sample.add_argument("pipeline", nargs="?", default=None,
                        help="Pipeline folder (save_pretrained) or Hub repo id (default: the shipped BloodMNIST model).")
    sample.add_argument("--num-images", type=int, default=16)
    sample.add_argument("--fast", action="store_true",
                        help="The shipped 4-step distilled model instead of the default (4 network evaluations per "
                             "image, not 20; its test FID beside the teacher's is on its card).")
    which = sample.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_name", default=None, help="Only this class (name, prefix or index).")
    which.add_argument("--balanced", action="store_true", help="Equal images per class (N a multiple of classes).")
    which.add_argument("--like-split", choices=("train", "val", "test"), default=None,
                       help="Class frequencies of this real split.")
    add_generation_options(sample)
    sample.add_argument("--out", default="samples.png", help="Output file (.npz, .png) or folder.")
    sample.add_argument("--format", default=None, choices=("npz", "folder", "datasets", "grid", "dicom"),
                        help="Default: from --out (.npz -> npz, .png -> grid). dicom: a folder of Secondary Capture "
                             "files marked synthetic, mapped back through the run's intensity window.")
    sample.add_argument("--chunk-size", type=int, default=None,
                        help="Images generated and written per chunk (default: 256 up to 48 px, fewer for larger "
                             "images: memory is one chunk).")
    sample.set_defaults(func=cmd_sample)

    evaluate = commands.add_parser("evaluate", help="FID/KID on both protocols with the real-vs-real floor.")
    evaluate.add_argument("source", nargs="?", default=None,
                          help="Pipeline folder / Hub repo id, or generated images (.npz or a folder); "
                               "default: the shipped BloodMNIST model.")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"))
    evaluate.add_argument("--size", type=int, default=None,
                          help="Image size of the real data (default: the pipeline's; MedMNIST: that size's file, "
                               "other sources are resized).")
    evaluate.add_argument("--num-samples", type=int, default=None, help="Generated images (default: split size).")
    evaluate.add_argument("--num-real", type=int, default=None,
                          help="Random subset of the real split (quick checks only; default: all of it).")
    evaluate.add_argument("--protocols", default="standard,seed", help="Comma-separated: standard, seed.")
    evaluate.add_argument("--no-floor", action="store_true", help="Skip the real-vs-real floor.")
    evaluate.add_argument("--chunk-size", type=int, default=None,
                          help="Images generated per batch (default: 256 up to 48 px, fewer for larger images).")
    evaluate.add_argument("--inception-weights", default=None, help="FID Inception TorchScript file (optional).")
    evaluate.add_argument("--images-key", default=None,
                          help="The generated array of an npz (default: images, else train_images as medgen sample "
                               "writes, else its only *_images array).")
    evaluate.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
    evaluate.add_argument("--out", default=None,
                          help="JSON path (default: PIPELINE/evaluation.json for your own pipeline folder, else "
                               "./evaluation.json; never inside the shipped model).")
    add_generation_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    audit = commands.add_parser("audit", help="Privacy audit: nearest training images, copy rate, membership "
                                              "inference, closest-pairs figure.")
    audit.add_argument("pipeline", nargs="?", default=None,
                       help="Pipeline folder or Hub repo id (default: the shipped BloodMNIST model).")
    audit.add_argument("--num-samples", type=int, default=None,
                       help="Synthetic images to audit (default: as many as the training images the model saw, at "
                            "most 1,000).")
    audit.add_argument("--num-train", type=int, default=None, help="Random training images to compare with "
                                                                  "(default: all).")
    audit.add_argument("--num-test", type=int, default=None, help="Held-out test images, the baseline (default: all).")
    audit.add_argument("--num-mia", type=int, default=None, help="Members and non-members for the loss attack "
                                                                 "(default: 1,000, or all a small dataset holds).")
    audit.add_argument("--spaces", default="pixel,inception",
                       help="Distance spaces: pixel, inception; latent (a latent model's VAE space).")
    audit.add_argument("--out", default=None,
                       help="JSON path (default: PIPELINE/audit.json for a pipeline folder, where the card and the "
                            "app read it; else ./audit.json).")
    audit.add_argument("--figure", default=None,
                       help="PNG of the closest synthetic/training pairs ('' for none). It shows real training "
                            "images: default beside --out for a public MedMNIST set, none for your own data.")
    audit.add_argument("--overwrite", action="store_true", help="Replace an existing --out / --figure.")
    add_generation_options(audit)
    audit.set_defaults(func=cmd_audit)

    utility = commands.add_parser("utility", help="Classifiers trained on synthetic vs real images, scored on real "
                                                  "test images (TSTR, augmentation).")
    utility.add_argument("pipeline", nargs="?", default=None, help="Pipeline folder or Hub repo id (default: shipped).")
    utility.add_argument("--num-train", type=int, default=None, help="N for TRTR/TSTR (default: the train split).")
    utility.add_argument("--fractions", default="0.01,0.1,1", help="Real-data fractions for the augmentation arms.")
    utility.add_argument("--num-seeds", type=int, default=3, help="Classifier seeds per arm: 0 .. N-1.")
    utility.add_argument("--seeds", default="", help="These classifier seeds instead, e.g. '1,2' to add seeds to "
                                                     "an earlier run in a second process; combine with --merge.")
    utility.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                         help="Combine result files of one protocol run with different --seeds into --out "
                              "(no pipeline is run).")
    utility.add_argument("--epochs", type=int, default=10,
                         help="Classifier steps, in epochs of N images; every arm gets as many (MedMNIST used 100).")
    utility.add_argument("--split", default="test", choices=("test", "val"),
                         help="Real split the classifiers are scored on: test to report, val to choose settings.")
    utility.add_argument("--arms", default="", help="Only these arms, e.g. 'trtr,tstr' for a guidance sweep "
                                                    "(default: all).")
    utility.add_argument("--out", default=None,
                         help="JSON path (default: PIPELINE/utility.json for a pipeline folder; else ./utility.json).")
    utility.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
    add_generation_options(utility)
    utility.set_defaults(func=cmd_utility)

    figures = commands.add_parser("figures", help="Figures of a training run (curves, progressive, classes).")
    figures.add_argument("run_dir", nargs="?", default=None,
                         help="Training output_dir or pipeline folder (default: the shipped BloodMNIST model).")
    figures.add_argument("--out-dir", default=None,
                         help="Where to write the PNGs (default: RUN_DIR; the current directory for the shipped model).")
    figures.add_argument("--steps", type=int, default=50, help="DDIM steps for the generated figures.")
    figures.add_argument("--seed", type=int, default=0)
    figures.add_argument("--data-root", default=None)
    figures.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    figures.add_argument("--show-real", action="store_true",
                         help="Own data: put 16 real training images beside the progressive figure (written as "
                              "progressive_with_real.png, which medgen push never sends). Public MedMNIST sets: "
                              "always shown.")
    figures.set_defaults(func=cmd_figures)

    card = commands.add_parser("card", help="Write PIPELINE_DIR/README.md (the Hub model card).")
    card.add_argument("pipeline_dir")
    card.add_argument("--repo-id", default=None, help="Repo id shown in the usage snippets.")
    card.add_argument("--description", default=None, help="What your training data is (own data; default: the "
                                                           "run's --data_description).")
    card.add_argument("--citation", default=None, help="BibTeX to cite for your data (default: the run's).")
    card.set_defaults(func=cmd_card)

    push = commands.add_parser("push", help="Upload a pipeline folder to a Hub model repo (one commit).")
    push.add_argument("pipeline_dir")
    push.add_argument("repo_id")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / huggingface-cli login).")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_const", const=True, default=None,
                            help="Create the repository private (the default unless the model was trained on a "
                                 "public data set such as a MedMNIST flag).")
    visibility.add_argument("--public", dest="private", action="store_const", const=False,
                            help="Create the repository public, even for a model of your own data.")
    push.add_argument("--dry-run", action="store_true", help="List exactly the files that would be sent; send none.")
    push.set_defaults(func=cmd_push)

    prepare = commands.add_parser("prepare", help="Decode a data source once into a memory-mapped store that every "
                                                  "command reads (--dataset STORE) without decoding again.")
    prepare.add_argument("source", help="Anything --dataset takes: a folder of images, DICOM or NIfTI, an npz, a "
                                        "datasets dataset, a MedMNIST flag.")
    prepare.add_argument("--out", required=True, help="The store folder to create (never overwritten).")
    prepare.add_argument("--resolution", type=int, default=None, help="Store at N x N (default: the data's own).")
    prepare.add_argument("--workers", type=int, default=None,
                         help="Decoding processes (default: the CPU count for a split of 2,000+ files, else this "
                              "process; 1: this process).")
    prepare.add_argument("--data-root", default=None, help="Folder holding MedMNIST .npz files.")
    add_source_options(prepare)
    prepare.set_defaults(func=cmd_prepare)

    app = commands.add_parser("app", help="The web demo (Gradio, the [app] extra) for a pipeline folder.")
    app.add_argument("pipeline", nargs="?", default=None,
                     help="Pipeline folder or Hub repo id (default: the shipped BloodMNIST model).")
    app.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0: reachable from others).")
    app.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, 7860 or the next free one).")
    app.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    app.add_argument("--share", action="store_true",
                     help="Also a public gradio.live link (anyone with it can generate; off by default).")
    app.add_argument("--study", default=None,
                     help="A reader study folder (medgen reader-study create): adds the 'Reader study' tab.")
    app.set_defaults(func=cmd_app)

    study = commands.add_parser("reader-study", help="A blinded real-vs-synthetic reader study: create, then score.")
    actions = study.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    create = actions.add_parser("create", help="Half held-out real images, half class-matched synthetic, shuffled "
                                               "under opaque ids.")
    create.add_argument("pipeline", nargs="?", default=None,
                        help="Pipeline folder or Hub repo id (default: the shipped BloodMNIST model).")
    create.add_argument("--num-images", type=int, required=True, help="Images in the study (even: half real).")
    create.add_argument("--out", required=True, help="The study folder to create (never overwritten).")
    create.add_argument("--split", default="test", choices=("test", "val", "train"),
                        help="Real images from this split of the model's data (default: test, never trained on).")
    create.add_argument("--include-training-images", action="store_true", help="Allow --split train.")
    create.add_argument("--balanced", action="store_true", help="As many real images of every class (default: the "
                                                                 "split's class mix).")
    add_generation_options(create)
    score = actions.add_parser("score", help="Score the answers: results.json and results.png in the study folder.")
    score.add_argument("study", help="The study folder.")
    study.set_defaults(func=cmd_reader_study)

    data = commands.add_parser("data", help="Locate, verify (MD5) and summarise a MedMNIST dataset.")
    data.add_argument("--dataset", default="bloodmnist")
    data.add_argument("--size", type=int, default=28)
    data.add_argument("--root", default=None, help="Folder holding the .npz (default: $MEDMNIST_ROOT, ~/.medmnist).")
    data.add_argument("--no-download", action="store_true")
    data.set_defaults(func=cmd_data)
    return parser


# The training scripts, as commands of an installed package: `medgen train ARGS` is `train_unconditional.py ARGS`
# (their own argument parsers and --help; `accelerate launch -m medgen_diffusers.train` for several processes).
SCRIPTS = {"train": "medgen_diffusers.train", "distill": "medgen_diffusers.distill", "train-vae": "medgen_diffusers.vae"}


def main(argv=None):
    """Exit codes: 2 for bad input (our errors say what and how to fix it), 3 for the network or the Hub; anything
    else is a bug or a machine failure (e.g. CUDA out of memory) and keeps its traceback (exit 1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SCRIPTS:
        import importlib

        from . import arguments

        prog = f"medgen {argv[0]}"
        # The script's arguments are parsed before torch loads (arguments.py): --help and a mistyped option answer
        # at once; the script parses them again (a few milliseconds) and runs.
        getattr(arguments, f"{argv[0].replace('-', '_')}_args")(argv[1:], prog=prog, resolve=False)
        script = importlib.import_module(SCRIPTS[argv[0]])
        return _run(argv[0], lambda: script.main(argv[1:], prog=prog))
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the sub-command's own usage and "did you mean", not the top-level parser's
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return _run(args.command, lambda: args.func(args))


def _run(command, job):
    from .hub import HubError, network_error

    try:
        job()
    except HubError as error:
        print(f"medgen {command}: error: {error}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as error:
        if network_error(error):  # the Hub's errors subclass OSError and ValueError alike: asked first
            print(f"medgen {command}: error: could not get it from the Hugging Face Hub ({error}); check the "
                  "name, the network (HF_HUB_OFFLINE=1 uses the local cache only) and the token.", file=sys.stderr)
            return 3
        if not isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            raise  # a disk or machine failure, not the user's input: keep the traceback
        if isinstance(error, ValueError) and not _raised_here(error):
            # A library's own ValueError (numpy's "kth out of bounds", ...) is a case this code did not handle: a
            # bug to report, never shown as if the user's input were wrong.
            print(f"medgen {command}: internal error (a bug in medgen-diffusers, not your input; please report it "
                  f"with the traceback below): {type(error).__name__}: {error}", file=sys.stderr)
            raise
        print(f"medgen {command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _raised_here(error: BaseException) -> bool:
    """Whether ``error`` was raised by this package's own code (the innermost frame of its traceback)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return True
    path = Path(frame.tb_frame.f_code.co_filename).resolve()
    # The pipeline file runs from the model's folder or the Hub's module cache: its checks are ours too.
    return Path(__file__).resolve().parent in path.parents or path.name == "pipeline_bloodmnist.py"


if __name__ == "__main__":
    sys.exit(main())
