"""`auto_label generate`: run the labeler(s) a TAO spec asks for, on any number of processes, resumably.

- mal: MAL turns the boxes of `mal.inference.ann_path` into masks.
- grounding_dino: Grounding DINO labels boxes for class names or noun chunks.
- text2mask: Grounding DINO's boxes, then MAL's mask for each of them, in one COCO file holding boxes,
  masks, Grounding DINO's `score` and MAL's `mal_score`; with `mask_labeler: sam`, SAM's masks and `sam_score`.
- sam (our extension of TAO's spec): SAM, SAM-HQ, SAM 2 or EdgeTAM turns the boxes of `sam.inference.ann_path`
  into masks, with no training (sam.stage).
Each stage is a Lightning predict run whose writer shards results per rank and merges them exactly
once; a stage started again after a kill resumes from its shards (see labelkit.shards).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import ListConfig, OmegaConf

from auto_label.report import build_report, summary, write_report
from auto_label.review import write_review
from auto_label.spec import IMAGENET_MEAN, IMAGENET_STD, Spec, SpecError
from gdino.data import GroundingDinoDataModule
from gdino.module import GroundingDinoLabeler
from gdino.writer import CocoPredictionWriter
from labelkit.console import ProgressLine
from labelkit.evaluation import mask_truth
from labelkit.precision import accelerator_device, resolve_dtype_name, resolve_precision
from labelkit.writers import check_writable
from mal.backbone import ARCH_ALIASES
from mal.checkpoint import describe_checkpoint, load_pretrained, with_architecture
from mal.data import COCOBoxDataModule
from mal.evaluate import evaluate_files, print_table
from mal.module import MALModule
from mal.writer import MaskLabelWriter
from sam.stage import sam_stage

# TAO Grounding DINO backbones -> the architectures of gdino.model (for original .pth checkpoints).
GDINO_BACKBONES = {"swin_tiny_224_1k": "tiny", "swin_base_384_22k": "base"}
# Spec keys that describe MAL's architecture -> MALModule arguments.
MAL_ARCH_KEYS = {
    "mal.model.arch": "arch",
    "mal.dataset.crop_size": "crop_size",
    "mal.model.mask_head_num_convs": "mask_head_num_convs",
    "mal.model.mask_head_hidden_channel": "mask_head_hidden_channel",
    "mal.model.mask_head_out_channel": "mask_head_out_channel",
    "mal.model.not_adjust_scale": "not_adjust_scale",
    "mal.model.mask_scale_ratio_pre": "mask_scale_ratio_pre",
    "mal.model.mask_scale_ratio": "mask_scale_ratio",
    "mal.model.vit_dpr": "drop_path_rate",
}


def accelerator() -> str:
    """The stages run on the GPUs when there are any, else on the CPU."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def mal_precision(spec: Spec) -> tuple[str, str]:
    """(Lightning precision, reason) of the MAL stage. TAO's `mal.train.use_amp` (default true) means mixed
    precision where the hardware computes it fast: `precision: auto` (labelkit.precision); false: fp32."""
    if not spec.get("mal.train.use_amp"):
        return "32-true", "mal.train.use_amp is false"
    return resolve_precision("auto", accelerator_device(accelerator()), purpose="label")


def trainer_kwargs(spec: Spec) -> dict:
    """Devices and nodes from num_gpus / gpu_ids, or from torchrun / SLURM when they started the processes.

    Without a GPU, num_gpus is the number of CPU processes (gloo), which is how multi-process runs are
    tested.
    """
    env = os.environ
    num_gpus, gpu_ids = spec.get("num_gpus"), list(spec.get("gpu_ids"))
    accelerator_name = accelerator()
    num_nodes = 1
    if "TORCHELASTIC_RUN_ID" in env:  # torchrun: one process per local device, on every node
        devices = int(env["LOCAL_WORLD_SIZE"])
        num_nodes = int(env["WORLD_SIZE"]) // devices
    elif "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        devices, num_nodes = num_gpus, int(env.get("SLURM_NNODES", "1"))
    elif accelerator_name == "gpu":
        if len(gpu_ids) == num_gpus:
            devices = gpu_ids
        elif gpu_ids == [0]:  # the default: the first num_gpus GPUs
            devices = list(range(num_gpus))
        else:
            raise SpecError(f"{spec.source}: gpu_ids {gpu_ids} lists {len(gpu_ids)} GPUs but num_gpus is {num_gpus}")
    else:
        devices = num_gpus
    world = (len(devices) if isinstance(devices, list) else devices) * num_nodes
    return {
        "accelerator": accelerator_name,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": "ddp" if world > 1 else "auto",
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": sys.stderr.isatty(),
        "use_distributed_sampler": False,  # the datamodules split the images themselves, without padding
    }


def stage_dir(spec: Spec, block: str) -> Path:
    """A stage's results folder: its own results_dir, else the top one (a subfolder per stage in text2mask)."""
    own = spec.get(f"{block}.results_dir")
    if own:
        return Path(own)
    top = Path(spec.get("results_dir"))
    return top / block if spec.get("autolabel_type") == "text2mask" else top


def _same_arch(a, b) -> bool:
    return ARCH_ALIASES.get(a, a) == ARCH_ALIASES.get(b, b) if isinstance(a, str) else a == b


def build_mal(spec: Spec) -> MALModule:
    """MALModule for the spec's checkpoint: our own checkpoints know their architecture, others take the spec's."""
    checkpoint = spec.get("mal.checkpoint")
    info = describe_checkpoint(checkpoint)
    if info["layout"] == "backbone":
        raise SpecError(
            f"mal.checkpoint: {checkpoint} holds backbone weights only, no mask decoder: train MAL first "
            "(python -m mal fit, with model.pretrained_path set to this file)"
        )
    if "hparams" in info:
        kwargs = dict(info["hparams"])
        for key, name in MAL_ARCH_KEYS.items():
            if spec.is_set(key) and not _same_arch(spec.get(key), kwargs[name]):
                raise SpecError(
                    f"{spec.source}: {key} is {spec.get(key)!r} but {checkpoint} was trained with {kwargs[name]!r}; "
                    "remove the key (the checkpoint knows its architecture)"
                )
    else:  # an original / TAO checkpoint: its tensors fix the architecture, the spec gives the rest
        kwargs = with_architecture({name: spec.get(key) for key, name in MAL_ARCH_KEYS.items()}, checkpoint, info)
    thresholds = spec.get("mal.train.mask_thres")
    if spec.is_set("mal.train.mask_thres") or "hparams" not in info:
        kwargs["mask_thres"] = list(thresholds) if not isinstance(thresholds, (int, float)) else thresholds
    kwargs["pretrained_path"] = str(checkpoint)
    for name in ("use_teacher_test", "use_flip_test", "use_mixed_model_test"):
        kwargs[name] = spec.get(f"mal.evaluate.{name}")
    module = MALModule(**kwargs)
    if kwargs["use_teacher_test"] or kwargs["use_mixed_model_test"]:
        load_pretrained(module.teacher, checkpoint, branch="teacher")
    return module


def _setting(spec: Spec, own: str, top: str):
    """A per-stage key when the user set it, else the top-level one (TAO's batch_size / num_workers)."""
    return spec.get(own) if spec.is_set(own) else spec.get(top)


def run_mal(spec: Spec, ann_path: str, img_dir: str, fresh: bool, data_options: dict) -> dict:
    out = spec.get("mal.inference.label_dump_path") or stage_dir(spec, "mal") / "labels.json"
    data_kwargs = dict(
        predict_ann_path=str(ann_path),
        predict_img_dir=str(img_dir),
        eval_batch_size=_setting(spec, "mal.inference.batch_size", "batch_size"),
        num_workers=_setting(spec, "mal.dataset.num_workers_per_gpu", "num_workers"),
        test_margin_rate=tuple(spec.get("mal.train.test_margin_rate")),
        **data_options,
    )
    check_writable(Path(out).parent)
    boxes = COCOBoxDataModule(**data_kwargs).load_predict_coco()  # a bad file stops here, before the weights
    load_mask = spec.get("mal.inference.load_mask")
    if load_mask and not mask_truth(boxes).instances:
        raise SpecError(
            f"{spec.source}: mal.inference.load_mask is true, but {ann_path} holds no instance masks to compare "
            "the labels with; set it to false"
        )
    module = build_mal(spec)
    data = COCOBoxDataModule(crop_size=module.hparams.crop_size, **data_kwargs)
    data.predict_coco = boxes
    writer = MaskLabelWriter(str(out), fresh=fresh)
    precision, reason = mal_precision(spec)
    summary = _predict(spec, module, data, writer, precision)
    inputs = {"mal_checkpoint": spec.get("mal.checkpoint"), "mal_ann_path": str(ann_path), "mal_img_dir": str(img_dir)}
    stage = {"name": "mal", "inputs": inputs, **summary, "precision_reason": reason, "output": str(out)}
    if load_mask and summary["is_global_zero"]:  # TAO's load_mask: score the labels against the input's masks
        metrics = evaluate_files(str(out), str(ann_path))
        print_table(metrics, f"MAL masks vs the masks in {ann_path}")
        stage["evaluation"] = metrics
    return stage


def run_sam(spec: Spec, ann_path: str, img_dir: str, fresh: bool, data_options: dict) -> dict:
    """SAM (sam.stage): a mask for every box of `ann_path`; our extension of TAO's spec."""
    out = spec.get("sam.inference.label_dump_path") or stage_dir(spec, "sam") / "labels.json"
    stage = sam_stage(
        spec.get("sam.checkpoint"),
        ann_path,
        img_dir,
        out,
        fresh=fresh,
        batch_size=_setting(spec, "sam.inference.batch_size", "batch_size"),
        num_workers=_setting(spec, "sam.inference.num_workers", "num_workers"),
        precision=spec.get("sam.precision"),
        multimask=spec.get("sam.multimask"),
        boxes_per_forward=spec.get("sam.boxes_per_forward"),
        data_options=data_options,
    )
    summary = _predict(spec, stage.module, stage.data, stage.writer)  # weights cast by the module: 32-true here
    summary.update(precision=stage.module.precision_name, precision_reason=stage.module.precision_reason)
    inputs = {"sam_checkpoint": spec.get("sam.checkpoint"), "sam_ann_path": str(ann_path), "sam_img_dir": str(img_dir)}
    return {"name": "sam", "inputs": inputs, **summary, "output": str(out)}


def build_gdino(spec: Spec, precision: str = "auto") -> GroundingDinoLabeler:
    checkpoint = Path(spec.get("grounding_dino.checkpoint"))
    augmentation = spec.get("grounding_dino.dataset.augmentation")
    if list(augmentation.input_mean) != IMAGENET_MEAN or list(augmentation.input_std) != IMAGENET_STD:
        raise SpecError(
            f"{spec.source}: grounding_dino.dataset.augmentation.input_mean/input_std: only the ImageNet values "
            "the released models were trained with are supported"
        )
    architecture = tokenizer = None
    if checkpoint.is_file():  # an original IDEA / TAO .pth: architecture and tokenizer come from the spec
        backbone = spec.get("grounding_dino.model.backbone")
        if backbone not in GDINO_BACKBONES:
            raise SpecError(f"grounding_dino.model.backbone: {backbone!r} is not one of {', '.join(GDINO_BACKBONES)}")
        architecture = GDINO_BACKBONES[backbone]
        tokenizer = spec.get("grounding_dino.model.text_encoder_type")
        if not Path(tokenizer).is_dir():
            raise SpecError(
                f"grounding_dino.model.text_encoder_type: {tokenizer!r} is not a local folder; set it to a "
                "folder holding the BERT vocab.txt (nothing is downloaded)"
            )
    sizes = (augmentation.test_random_resize, augmentation.random_resize_max_size)
    labeler = GroundingDinoLabeler(
        str(checkpoint),
        architecture=architecture,
        tokenizer=tokenizer,
        iteration_scheduler=spec.to_dict()["grounding_dino"]["iteration_scheduler"],
        annealing=spec.get("grounding_dino.annealing"),
        image_size=None if sizes == (800, 1333) else {"shortest_edge": sizes[0], "longest_edge": sizes[1]},
        precision=precision,
    )
    for key in ("num_queries", "max_text_len"):
        actual = getattr(labeler.model.config, key)
        if spec.is_set(f"grounding_dino.model.{key}") and spec.get(f"grounding_dino.model.{key}") != actual:
            raise SpecError(
                f"grounding_dino.model.{key}: the spec says {spec.get(f'grounding_dino.model.{key}')} "
                f"but {checkpoint} has {actual}"
            )
    return labeler


def run_gdino(spec: Spec, fresh: bool, writer_kwargs: dict, data_options: dict) -> dict:
    """Label boxes; `writer_kwargs` lets a chained run keep the shards until its last stage is done."""
    out_dir = stage_dir(spec, "grounding_dino")
    class_names = spec.get("grounding_dino.dataset.class_names")
    image_dir = spec.get("grounding_dino.dataset.image_dir")
    image_dir = OmegaConf.to_container(image_dir) if isinstance(image_dir, ListConfig) else image_dir
    data = GroundingDinoDataModule(
        image_dir=image_dir,
        class_names=list(class_names) if class_names else None,
        noun_chunk_path=spec.get("grounding_dino.dataset.noun_chunk_path"),
        batch_size=spec.get("batch_size"),
        num_workers=spec.get("num_workers"),
        **data_options,
    )
    check_writable(out_dir)
    writer = CocoPredictionWriter(
        str(out_dir / "labels.json"),
        odvg_path=str(out_dir / "final_annotation.jsonl"),
        visualize_dir=str(out_dir / "visualize") if spec.get("grounding_dino.visualize") else None,
        fresh=fresh,
        **writer_kwargs,
    )
    # TAO has no precision key for Grounding DINO: always auto (its weights are cast, no autocast)
    precision, reason = resolve_dtype_name("auto", accelerator_device(accelerator()))
    summary = _predict(spec, build_gdino(spec, precision), data, writer)
    inputs = {
        "gdino_checkpoint": spec.get("grounding_dino.checkpoint"),
        "gdino_image_dir": image_dir,
    }
    summary.update(precision=precision, precision_reason=reason, image_root=str(data.image_root))
    return {"name": "grounding_dino", "inputs": inputs, **summary, "output": str(writer.output), "shards": writer.store}


def _predict(spec: Spec, module, data, writer, precision: str = "32-true") -> dict:
    """One Lightning predict run in `precision`; returns the writer's counts (rank 0) with the stage's wall time
    and the trainer's precision."""
    start = time.perf_counter()
    trainer = L.Trainer(
        **trainer_kwargs(spec),
        precision=precision,
        callbacks=[writer, ProgressLine()],
        default_root_dir=spec.get("results_dir") or None,
    )
    trainer.predict(module, datamodule=data, return_predictions=False)
    summary = dict(writer.summary or {})
    summary.update(wall_time_s=round(time.perf_counter() - start, 3), processes=trainer.world_size)
    summary["precision"] = trainer.precision
    summary["is_global_zero"], summary["accelerator"] = trainer.is_global_zero, type(trainer.accelerator).__name__
    return summary


def generate(spec: Spec, fresh: bool = False, data_options: dict | None = None) -> dict | None:
    """Run every stage of the spec; rank 0 writes and prints the report and returns it (other ranks: None).

    `data_options` go to every stage's data module: strict, allow_outside_image_dir, max_pixels.
    """
    data_options = data_options or {}
    start = time.perf_counter()
    kind = spec.get("autolabel_type")
    stages = []
    if kind in ("grounding_dino", "text2mask"):
        # A chained run keeps Grounding DINO's shards until MAL is done, so a restart does not redo the boxes.
        stages.append(run_gdino(spec, fresh, {"keep_shards": kind == "text2mask"}, data_options))
    if kind == "mal":
        ann_path, img_dir = spec.get("mal.inference.ann_path"), spec.get("mal.inference.img_dir")
        stages.append(run_mal(spec, ann_path, img_dir, fresh, data_options))
    if kind == "sam":
        ann_path, img_dir = spec.get("sam.inference.ann_path"), spec.get("sam.inference.img_dir")
        stages.append(run_sam(spec, ann_path, img_dir, fresh, data_options))
    if kind == "text2mask":  # the boxes' file names are relative to the folders' common root
        masks = run_sam if spec.get("mask_labeler") == "sam" else run_mal
        stages.append(masks(spec, stages[0]["output"], stages[0]["image_root"], fresh, data_options))
    if not stages[-1]["is_global_zero"]:
        return None
    shards = stages[0].pop("shards", None)
    if kind == "text2mask":
        shards.remove()
    wall = time.perf_counter() - start
    accelerator = stages[0]["accelerator"].removesuffix("Accelerator").lower()
    report = build_report(spec, stages, wall, stages[0]["processes"], accelerator)
    path = (
        Path(spec.get("results_dir") or stage_dir(spec, kind if kind in ("mal", "sam") else "grounding_dino"))
        / "report.json"
    )
    labels = stages[-1]
    image_dir = labels["inputs"].get(f"{labels['name']}_img_dir") or labels["image_root"]  # mal, sam; else gdino
    outside = data_options.get("allow_outside_image_dir", False)
    review = write_review(labels["output"], image_dir, path.parent / "review", report, allow_outside_image_dir=outside)
    report["outputs"]["review"] = str(review)
    write_report(path, report)
    print(summary(report, path))
    return report
