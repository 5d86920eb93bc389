"""TAO auto-label experiment specs: every TAO key with TAO's default, dotted overrides, strict checking.

A spec is YAML (`auto_label generate -e spec.yaml key=value ...`). The schema below lists every key
TAO's auto-label spec has, with TAO's defaults; a key that is not in it is an error naming the closest
valid key, so a typo never silently falls back to a default. Values are type-checked against the
defaults. Which keys a user set (in the file or on the command line) is kept, because a few settings
have two homes (top-level `batch_size` vs `mal.inference.batch_size`) and the one set explicitly wins.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from labelkit.images import IMAGENET_MEAN, IMAGENET_STD
from sam.spec import SPEC_SCHEMA as SAM_SCHEMA
from sam.spec import spec_problem as sam_problem

AUTOLABEL_TYPES = ("mal", "grounding_dino", "text2mask", "sam")  # sam: ours, not TAO's

SCHEMA = {
    "autolabel_type": "mal",
    "gpu_ids": [0],
    "num_gpus": 1,
    "batch_size": 4,
    "num_workers": 8,
    "results_dir": "",
    "mask_labeler": "mal",  # ours, not TAO's: text2mask's masks from mal or sam
    "mal": {
        "checkpoint": None,
        "results_dir": None,
        "dataset": {
            "type": "coco",
            "train_ann_path": None,
            "train_img_dir": None,
            "val_ann_path": None,
            "val_img_dir": None,
            "min_obj_size": 2048,
            "max_obj_size": 1e10,
            "num_workers_per_gpu": 2,
            "load_mask": True,
            "crop_size": 512,
        },
        "model": {
            "arch": "vit-mae-base/16",
            "frozen_stages": [-1],
            "mask_head_num_convs": 4,
            "mask_head_hidden_channel": 256,
            "mask_head_out_channel": 256,
            "teacher_momentum": 0.996,
            "not_adjust_scale": False,
            "mask_scale_ratio_pre": 1,
            "mask_scale_ratio": 2.0,
            "vit_dpr": 0,
        },
        "train": {
            "num_epochs": 10,
            "batch_size": 3,
            "accum_grad_batches": 1,
            # true: mixed precision where the hardware computes it fast (`precision: auto`, labelkit.precision:
            # bf16 on GPUs with bf16 and CPUs with AVX512-BF16 / AMX, fp16 on other GPUs, fp32 on other CPUs);
            # false: fp32. `generate` applies it to the MAL stage; Grounding DINO always takes auto.
            "use_amp": True,
            "pretrained_model_path": None,
            "optim_type": "adamw",
            "lr": 1e-6,
            "min_lr_rate": 0.2,
            "wd": 5e-4,
            "optim_eps": 1e-8,
            "optim_betas": [0.9, 0.9],
            "warmup_epochs": 1,
            "margin_rate": [0, 1.2],
            "test_margin_rate": [0.6, 0.6],
            "mask_thres": [0.1],
            "loss_mil_weight": 4,
            "loss_crf_weight": 0.5,
            "crf_zeta": 0.1,
            "crf_kernel_size": 3,
            "crf_num_iter": 100,
            "loss_mil_step": 1000,
            "loss_crf_step": 4000,
            "crf_size_ratio": 1,
            "crf_value_high_thres": 0.9,
            "crf_value_low_thres": 0.1,
            "seed": 1234,
            "checkpoint_interval": 1,
            "validation_interval": 1,
            "resume_training_checkpoint_path": None,
        },
        "inference": {
            "ann_path": None,
            "img_dir": None,
            "label_dump_path": None,
            "batch_size": 3,
            "load_mask": False,
        },
        "evaluate": {
            "checkpoint": None,
            "batch_size": 3,
            "use_teacher_test": False,
            "use_flip_test": False,
            "use_mixed_model_test": False,
        },
    },
    "grounding_dino": {
        "checkpoint": None,
        "results_dir": None,
        "visualize": True,
        "iteration_scheduler": [{"conf_threshold": 0.5, "nms_threshold": 0.0}],
        "annealing": "requery",  # ours, not TAO's: requery (TAO's semantics) | threshold (one forward)
        "model": {
            "backbone": "swin_tiny_224_1k",
            "num_queries": 900,
            "max_text_len": 256,
            "text_encoder_type": "bert-base-uncased",
        },
        "dataset": {
            "image_dir": None,
            "class_names": None,
            "noun_chunk_path": None,
            "augmentation": {
                "scales": [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
                "input_mean": IMAGENET_MEAN,
                "input_std": IMAGENET_STD,
                "horizontal_flip_prob": 0.5,
                "train_random_resize": [400, 500, 600],
                "train_random_crop_min": 384,
                "train_random_crop_max": 600,
                "random_resize_max_size": 1333,
                "test_random_resize": 800,
                "fixed_padding": True,
            },
        },
    },
    "sam": SAM_SCHEMA,  # ours, not TAO's (sam.spec)
}

# Values whose default is None or a list of mappings are free-form; these name their allowed types.
FREE_TYPES = {
    "grounding_dino.dataset.class_names": (list,),
    "grounding_dino.dataset.image_dir": (str, list),  # TAO: one folder or a list of folders
    "mal.train.mask_thres": (list, float, int),
}


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file and the key."""


@dataclass
class Spec:
    """A checked spec: every key present (defaults filled in) and the keys the user set."""

    config: DictConfig
    source: str
    overrides: list[str] = field(default_factory=list)
    user_keys: set[str] = field(default_factory=set)

    def get(self, key: str):
        return OmegaConf.select(self.config, key)

    def is_set(self, key: str) -> bool:
        return key in self.user_keys

    def to_dict(self) -> dict:
        return OmegaConf.to_container(self.config, resolve=True)


def _leaves(node, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value for every leaf of a nested mapping (lists are leaves)."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, name + "."))
        else:
            out[name] = value
    return out


ALL_KEYS = _leaves(SCHEMA)
ALL_SECTIONS = {k.rsplit(".", 1)[0] for k in ALL_KEYS if "." in k}


def _closest(name: str) -> str:
    candidates = list(ALL_KEYS) + sorted(ALL_SECTIONS)
    leaf = name.rsplit(".", 1)[-1]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if not match:  # a right key under a wrong section, or a short typo: compare last parts
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in candidates}
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        match = [by_leaf[leaf_match[0]]] if leaf_match else []
    return f"; did you mean '{match[0]}'?" if match else ""


def _type_ok(default, value) -> bool:
    if value is None or default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def check_keys(user: dict, source: str) -> set[str]:
    """Raise on unknown keys or wrong value types; return the dotted keys the user set."""
    problems = []
    set_keys = set()

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in ALL_KEYS:
                set_keys.add(name)
                default = ALL_KEYS[name]
                allowed = FREE_TYPES.get(name)
                if allowed:
                    if value is not None and not isinstance(value, allowed):
                        kinds = " or ".join(t.__name__ for t in allowed)
                        problems.append(f"'{name}' must be a {kinds}, got {value!r}")
                elif not _type_ok(default, value):
                    problems.append(f"'{name}' must be a {type(default).__name__} like {default!r}, got {value!r}")
            elif name in ALL_SECTIONS and isinstance(value, dict):
                walk(value, name + ".")
            elif name in ALL_SECTIONS:
                problems.append(f"'{name}' must be a mapping of keys, got {value!r}")
            else:
                problems.append(f"unknown key '{name}'{_closest(name)}")

    walk(user, "")
    if problems:
        raise SpecError(f"{source}: " + "; ".join(problems))
    return set_keys


def _to_plain(config, source: str) -> dict:
    try:
        plain = OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as e:
        raise SpecError(f"{source}: {e}") from None
    if not isinstance(plain, dict):
        raise SpecError(f"{source}: a spec must be a mapping of keys, got {type(plain).__name__}")
    return plain


def load_spec(path: str | Path | None, overrides: list[str] = ()) -> Spec:
    """Read the spec file (optional), apply `key=value` overrides, fill in TAO's defaults, check it all."""
    user = {}
    source = str(path) if path else "spec"
    if path:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"{path}: spec file not found")
        try:
            loaded = OmegaConf.load(path)
        except (OmegaConfBaseException, ValueError) as e:
            raise SpecError(f"{path}: cannot read the spec: {e}") from None
        user = _to_plain(loaded, source) if loaded is not None else {}
    user_keys = check_keys(user, source)
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise SpecError(f"overrides must look like key=value (e.g. results_dir=out/), got {bad[0]!r}")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise SpecError(f"command-line overrides: {e}") from None
    cli_plain = _to_plain(cli, "command line")
    user_keys |= check_keys(cli_plain, "command line")
    merged = OmegaConf.merge(OmegaConf.create(SCHEMA), OmegaConf.create(user), OmegaConf.create(cli_plain))
    spec = Spec(merged, source, list(overrides), user_keys)
    validate(spec)
    return spec


def validate(spec: Spec) -> None:
    """Checks across keys, before any model is loaded."""
    kind = spec.get("autolabel_type")
    if kind not in AUTOLABEL_TYPES:
        raise SpecError(f"{spec.source}: autolabel_type must be one of {', '.join(AUTOLABEL_TYPES)}, got {kind!r}")
    if spec.get("num_gpus") < 1:
        raise SpecError(f"{spec.source}: num_gpus must be >= 1, got {spec.get('num_gpus')}")
    for key in ("batch_size", "num_workers"):
        if spec.get(key) < (1 if key == "batch_size" else 0):
            raise SpecError(f"{spec.source}: {key} must be positive, got {spec.get(key)}")
    if kind in ("grounding_dino", "text2mask"):
        if spec.get("grounding_dino.dataset.class_names") and spec.get("grounding_dino.dataset.noun_chunk_path"):
            raise SpecError(
                f"{spec.source}: grounding_dino.dataset.class_names and grounding_dino.dataset.noun_chunk_path "
                "are two vocabularies: set one"
            )
        for key in ("checkpoint", "dataset.image_dir"):
            if not spec.get(f"grounding_dino.{key}"):
                raise SpecError(f"{spec.source}: grounding_dino.{key} is required for autolabel_type {kind}")
    uses_mal = kind == "mal" or (kind == "text2mask" and spec.get("mask_labeler") == "mal")
    if uses_mal and not spec.get("mal.checkpoint"):
        raise SpecError(f"{spec.source}: mal.checkpoint is required for autolabel_type {kind}")
    if kind == "mal":
        for key in ("ann_path", "img_dir"):
            if not spec.get(f"mal.inference.{key}"):
                raise SpecError(f"{spec.source}: mal.inference.{key} is required for autolabel_type mal")
    if kind == "text2mask":
        for key in ("mal.inference.ann_path", "mal.inference.img_dir"):
            if spec.is_set(key):
                raise SpecError(
                    f"{spec.source}: {key} is not used by text2mask (the boxes come from Grounding DINO and the "
                    "images from grounding_dino.dataset.image_dir); remove it"
                )
    problem = sam_problem(spec, kind)
    if problem:
        raise SpecError(f"{spec.source}: {problem}")
    _validate_values(spec, kind)
    results = ("results_dir", "mal.results_dir", "grounding_dino.results_dir", "sam.results_dir")
    if not any(spec.get(key) for key in results):
        raise SpecError(f"{spec.source}: results_dir is required (in the spec or as results_dir=... )")


def _validate_values(spec: Spec, kind: str) -> None:
    """Thresholds in [0, 1] and non-empty class lists, checked here so no model is loaded for nothing."""
    if kind in ("mal", "text2mask"):
        thresholds = spec.get("mal.train.mask_thres")
        values = [thresholds] if isinstance(thresholds, (int, float)) else list(thresholds)
        if len(values) not in (1, 3) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
            raise SpecError(f"{spec.source}: mal.train.mask_thres must be one or three values in [0, 1], got {values}")
    if kind in ("grounding_dino", "text2mask"):
        from gdino.schedule import ANNEALING_MODES, build_schedule  # light: no model code

        class_names = spec.get("grounding_dino.dataset.class_names")
        if class_names is not None and len(class_names) == 0:
            raise SpecError(f"{spec.source}: grounding_dino.dataset.class_names is an empty list; name some classes")
        try:
            build_schedule(spec.to_dict()["grounding_dino"]["iteration_scheduler"], None)
        except ValueError as e:
            raise SpecError(f"{spec.source}: grounding_dino.iteration_scheduler: {e}") from None
        annealing = spec.get("grounding_dino.annealing")
        if annealing not in ANNEALING_MODES:
            raise SpecError(
                f"{spec.source}: grounding_dino.annealing must be one of {', '.join(ANNEALING_MODES)}, "
                f"got {annealing!r}"
            )
