"""MAL as a LightningModule: student + EMA teacher trained from boxes, mask prediction for every box."""

from __future__ import annotations

import copy
import logging
import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.detection import MeanAveragePrecision

from labelkit.images import IMAGENET_MEAN, IMAGENET_STD
from labelkit.masks import box_mask
from labelkit.oom import map_chunks
from labelkit.tracking import log_image
from labelkit.visualize import draw_overlay, image_grid
from mal.backbone import compile_for_inference
from mal.checkpoint import CheckpointError, load_pretrained, load_strict, module_state, unwrap_state
from mal.crf import image_at, refine_logits
from mal.crops import paste_probabilities
from mal.decoder import size_bucket
from mal.grabcut import grabcut_masks
from mal.losses import crf_loss, crf_pseudo_label, dice_loss, lab_similarity, mil_loss, pairwise_loss, ramp
from mal.metrics import MaskIoUMetric, mask_ious
from mal.model import MaskNet, build_mask_net
from mal.score import expected_iou, image_evidence, label_score

log = logging.getLogger(__name__)


def is_degenerate(box_xyxy, height: int, width: int) -> bool:
    """A box that covers less than one pixel of the image on some axis gets its box mask, not a model mask."""
    x0, y0, x1, y1 = box_xyxy
    return min(x1, width) - max(x0, 0) < 1 or min(y1, height) - max(y0, 0) < 1


def per_size(value: list[float] | float, name: str) -> list[float]:
    """One value or three (small / medium / large boxes, `mal.decoder.size_bucket`) as three probabilities;
    ValueError naming the setting otherwise."""
    values = [value] if isinstance(value, (int, float)) else list(value)
    if len(values) not in (1, 3) or not all(0 <= v <= 1 for v in values):
        raise ValueError(f"model.{name} must be one or three values in [0, 1], got {value}")
    return values * 3 if len(values) == 1 else values


def box_areas(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """Areas (float32) of N x 4 xyxy boxes, which pick each box's size bucket."""
    return ((boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])).float()


def full_masks(regions: list[tuple[int, int, np.ndarray]], height: int, width: int) -> np.ndarray:
    """Place per-box mask regions (x0, y0, mask) into N x H x W uint8 image-size masks."""
    masks = np.zeros((len(regions), height, width), dtype=np.uint8)
    for i, (x0, y0, region) in enumerate(regions):
        masks[i, y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
    return masks


# Options that only steer prediction: taken from the command line / config even when `--ckpt_path`
# supplies the other hyperparameters (Lightning's CLI would otherwise replace them by the checkpoint's).
PREDICTION_OPTIONS = (
    "mask_thres",
    "use_teacher_test",
    "use_flip_test",
    "use_mixed_model_test",
    "max_boxes_per_forward",
    "num_overlays",
    "compile_backbone",
    "test_crf_num_iter",
    "test_crf_size",
    "test_crf_kernel_size",
    "test_crf_colour_weight",
    "test_crf_unary_max",
    "test_grabcut_num_iter",
    "test_grabcut_sure",
)


class MALModule(L.LightningModule):
    """Mask Auto-Labeler (Lan et al., CVPR 2023): learn box -> mask from boxes alone.

    Args:
        arch: timm ViT name (`vit_tiny_patch16_224`, `vit_base_patch16_224`, ...) or TAO name (`vit-mae-base/16`),
            or any other timm network (`resnet18`, `convnext_atto`, ...), cut at `feature_stride`.
        crop_size: crop side in pixels (linked to `data.crop_size`); position embeddings are sized to it.
        conv_stem: replace the 16x16 patch projection by MAL's 4-stage convolutional stem.
        feature_stride: the stride of the feature map taken from a non-ViT backbone (8, 16 or 32 where it has
            one); a ViT's is its patch size.
        backbone_kwargs: extra timm arguments (e.g. `depth: 6` for a shallower ViT).
        pretrained_path: weights to start from: a timm/MAE backbone state dict or a MAL checkpoint.
        drop_path_rate: stochastic depth of the ViT blocks (TAO `vit_dpr`).
        mask_head_num_convs / mask_head_hidden_channel / mask_head_out_channel: the decoder's V head and K size.
        not_adjust_scale: turn off the scale-adaptive decoder.
        mask_scale_ratio_pre / mask_scale_ratio: the feature map of size bucket k (small, medium, large) is
            resized by pre x ratio^(k - 1): 0.5x / 1x / 2x at TAO's defaults (1, 2.0), as the original.
        teacher_momentum: EMA momentum of the teacher, applied after every optimizer step.
        loss_size: side of the maps the losses (and the pasted masks) are computed from.
        loss_mil_weight / loss_crf_weight: loss weights, each ramped up linearly over
            loss_mil_step / loss_crf_step optimizer steps. With loss_crf_weight 0 a step runs neither the
            teacher nor the CRF (the self-training rounds: 0.72 instead of 0.49 steps/s on coco128).
        crf_zeta / crf_kernel_size / crf_num_iter: colour bandwidth, neighbourhood and mean-field iterations.
        crf_size_ratio: run the CRF at loss_size / crf_size_ratio.
        crf_value_low_thres / crf_value_high_thres: clamp of the CRF's unary probabilities.
        loss_pairwise_weight / loss_pairwise_step: weight of BoxInst's pairwise colour-affinity loss
            (`mal.losses.pairwise_loss`; 0 = off, as the original MAL) and its linear ramp-up in steps.
        pairwise_kernel_size / pairwise_dilation / pairwise_colour_thres: its neighbourhood (k x k pixels,
            `dilation` apart) and the Lab colour similarity above which two neighbours should share a label.
        loss_mask_weight: self-training: weight of the Dice loss against the training annotations' own masks
            (data.train_mask_min_score picks which are read; 0 = off, as the original MAL).
        lr: learning rate per box, multiplied by devices x batch size.
        min_lr_rate: the cosine schedule ends at lr x min_lr_rate.
        weight_decay / optim_eps / optim_betas: AdamW settings.
        warmup_epochs: linear warm-up length.
        mask_thres: probability threshold, one value or three (small / medium / large boxes).
        use_teacher_test: predict with the EMA teacher instead of the student.
        use_flip_test: average the logits of each crop and of its mirror image (flipped back).
        use_mixed_model_test: average the logits of the student and the teacher.
        max_boxes_per_forward: box crops per forward pass at validation and prediction.
        num_overlays: validation images drawn into the logged overlay grid.
        test_crf_num_iter / test_crf_size / test_crf_kernel_size: test-time refinement of every crop's mask
            against its colour edges (`mal.crf.refine_logits`: that many mean-field iterations on a
            size x size grid, crf_zeta as colour bandwidth); 0 iterations = off, as the original MAL.
        test_crf_colour_weight: weight of the crop's colour model (`mal.crf.colour_log_ratio`, GrabCut's idea)
            in the refinement's unary; 0 = colour edges only.
        test_crf_unary_max: cap on the model's probability in the refinement's unary, one value or three
            (small / medium / large boxes): lower lets the crop's colours overrule a confident mask.
        test_grabcut_num_iter / test_grabcut_sure: GrabCut of every crop after the refinement
            (`mal.grabcut.grabcut_masks`, OpenCV): that many iterations, started from the refined mask with
            its pixels above `test_grabcut_sure` as certain foreground; 0 iterations = off. The mask is
            GrabCut's; the score reads its expected IoU under the refined probabilities and the image
            evidence of GrabCut's mask.
        compile_backbone: `torch.compile` the ViT for prediction (Inductor, frozen weights, dynamic batch
            size). The first batch compiles (about 25 s for ViT-Tiny on this project's 2-core CPU); after
            that the predict path ran 0.91-1.15x (median 1.05x) as fast as eager there (BENCHMARKS.md), so it
            is off by default. On a CPU it needs a C++ compiler.
    """

    def __init__(
        self,
        arch: str = "vit_base_patch16_224",
        crop_size: int = 512,
        conv_stem: bool = False,
        feature_stride: int = 16,
        backbone_kwargs: dict | None = None,
        pretrained_path: str | None = None,
        drop_path_rate: float = 0.0,
        mask_head_num_convs: int = 4,
        mask_head_hidden_channel: int = 256,
        mask_head_out_channel: int = 256,
        not_adjust_scale: bool = False,
        mask_scale_ratio_pre: float = 1.0,
        mask_scale_ratio: float = 2.0,
        teacher_momentum: float = 0.996,
        loss_size: int = 128,
        loss_mil_weight: float = 4.0,
        loss_crf_weight: float = 0.5,
        loss_mil_step: int = 1000,
        loss_crf_step: int = 4000,
        crf_zeta: float = 0.1,
        crf_kernel_size: int = 3,
        crf_num_iter: int = 100,
        crf_size_ratio: int = 1,
        crf_value_low_thres: float = 0.1,
        crf_value_high_thres: float = 0.9,
        loss_pairwise_weight: float = 0.0,
        loss_mask_weight: float = 0.0,
        loss_pairwise_step: int = 1000,
        pairwise_kernel_size: int = 3,
        pairwise_dilation: int = 2,
        pairwise_colour_thres: float = 0.3,
        lr: float = 1e-6,
        min_lr_rate: float = 0.2,
        weight_decay: float = 5e-4,
        optim_eps: float = 1e-8,
        optim_betas: tuple[float, float] = (0.9, 0.9),
        warmup_epochs: float = 1.0,
        mask_thres: list[float] | float = 0.1,
        use_teacher_test: bool = False,
        use_flip_test: bool = False,
        use_mixed_model_test: bool = False,
        max_boxes_per_forward: int = 32,
        num_overlays: int = 8,
        compile_backbone: bool = False,
        test_crf_num_iter: int = 0,
        test_crf_size: int = 48,
        test_crf_kernel_size: int = 7,
        test_crf_colour_weight: float = 0.0,
        test_crf_unary_max: list[float] | float = 0.95,
        test_grabcut_num_iter: int = 0,
        test_grabcut_sure: float = 0.9,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.mask_thresholds = per_size(mask_thres, "mask_thres")
        self.unary_maxima = per_size(test_crf_unary_max, "test_crf_unary_max")
        self.student = build_mask_net(
            arch,
            crop_size,
            conv_stem,
            drop_path_rate,
            backbone_kwargs,
            mask_head_num_convs,
            mask_head_hidden_channel,
            mask_head_out_channel,
            not not_adjust_scale,
            mask_scale_ratio_pre,
            mask_scale_ratio,
            feature_stride,
        )
        if pretrained_path:
            layout = load_pretrained(self.student, pretrained_path)
            log.info("loaded %s weights from %s", layout, pretrained_path)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.iou_metric = MaskIoUMetric()
        self.ap_metric = MeanAveragePrecision(iou_type="segm", backend="pycocotools")
        self.overlays: list[np.ndarray] = []

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """`--ckpt_path` with any MAL layout (ours, the original's, TAO's): renamed to ours, with its own
        position-embedding grid; one that does not fit is a CheckpointError naming the keys."""
        path = (self._trainer and self.trainer.ckpt_path) or "--ckpt_path"
        state = unwrap_state(checkpoint, path)
        if not any(k.startswith("teacher.") for k in state):
            raise CheckpointError(f"{path}: not a MAL checkpoint with student and teacher weights")
        checkpoint["state_dict"] = module_state(state)
        load_strict(self, checkpoint["state_dict"], path)

    # ----------------------------------------------------------------- training
    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never uses dropout / drop-path
        return self

    def on_fit_start(self) -> None:
        """Self-training needs both halves: the masks read (data) and their loss weighed (model)."""
        datamodule = self.trainer.datamodule
        min_score = datamodule.hparams.get("train_mask_min_score") if datamodule is not None else None
        if self.hparams.loss_mask_weight > 0 and min_score is None:
            raise ValueError(
                "model.loss_mask_weight > 0 needs data.train_mask_min_score: which of the training file's masks "
                "to learn from (configs/mal/scratch_selftrain_cpu.yaml)"
            )
        if min_score is not None and self.hparams.loss_mask_weight <= 0:
            log.warning("data.train_mask_min_score is set but model.loss_mask_weight is 0: the masks are not used")

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:  # every image of the batch failed to decode (already logged)
            return None
        hp = self.hparams
        size = hp.loss_size
        box_mask = (F.interpolate(batch["box_mask"], size=(size, size), mode="area") > 0.5).float()
        student_logits = self.student(self.normalise(batch["student_image"]), batch["box_area"], size).float()
        student = student_logits.sigmoid()
        loss_mil = mil_loss(student, box_mask)
        step = self.global_step
        mil_weight = hp.loss_mil_weight * ramp(step, hp.loss_mil_step)
        crf_weight = hp.loss_crf_weight * ramp(step, hp.loss_crf_step)
        loss = mil_weight * loss_mil
        logged = {"train/loss_mil": loss_mil, "train/mil_weight": mil_weight}
        if hp.loss_crf_weight > 0:  # without it neither the teacher's forward pass nor the CRF is needed
            loss_crf = self.crf_term(student, batch, box_mask)
            loss = loss + crf_weight * loss_crf
            logged.update({"train/loss_crf": loss_crf, "train/crf_weight": crf_weight})
        if hp.loss_pairwise_weight > 0:
            loss_pairwise = self.pairwise_term(student_logits, batch["image"], box_mask)
            pairwise_weight = hp.loss_pairwise_weight * ramp(step, hp.loss_pairwise_step)
            loss = loss + pairwise_weight * loss_pairwise
            logged.update({"train/loss_pairwise": loss_pairwise, "train/pairwise_weight": pairwise_weight})
        if hp.loss_mask_weight > 0 and "mask" in batch:
            loss_mask = self.mask_term(student, batch, size)
            loss = loss + hp.loss_mask_weight * loss_mask
            logged["train/loss_mask"] = loss_mask
        batch_size = len(batch["image"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict(logged, batch_size=batch_size)
        return loss

    def crf_term(self, student: torch.Tensor, batch: dict, box_mask: torch.Tensor) -> torch.Tensor:
        """MAL's CRF loss: Dice of the student's B x 1 x L x L probabilities against the mean-field refinement
        of the student and EMA teacher's average (`mal.losses.crf_pseudo_label`), at loss_size / crf_size_ratio."""
        hp = self.hparams
        with torch.no_grad():
            teacher = self.teacher(self.normalise(batch["image"]), batch["box_area"], hp.loss_size).float().sigmoid()
        crf_side = hp.loss_size // hp.crf_size_ratio

        def at_crf_size(x):
            return F.interpolate(x, size=(crf_side, crf_side), mode="bilinear", align_corners=False)

        pseudo = crf_pseudo_label(
            at_crf_size(student.detach()),
            at_crf_size(teacher),
            (at_crf_size(box_mask) > 0.5).float(),
            image_at(batch["image"], crf_side),
            hp.crf_kernel_size,
            hp.crf_zeta,
            hp.crf_num_iter,
            hp.crf_value_low_thres,
            hp.crf_value_high_thres,
        )
        return crf_loss(at_crf_size(student), pseudo)

    def pairwise_term(self, logits: torch.Tensor, images: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
        """BoxInst's pairwise loss of the student's B x 1 x L x L logits against the uint8 crops' colours."""
        hp = self.hparams
        similarity = lab_similarity(image_at(images, logits.shape[-1]), hp.pairwise_kernel_size, hp.pairwise_dilation)
        return pairwise_loss(
            logits, similarity, box_mask, hp.pairwise_kernel_size, hp.pairwise_dilation, hp.pairwise_colour_thres
        )

    def mask_term(self, student: torch.Tensor, batch: dict, size: int) -> torch.Tensor:
        """Self-training: Dice of the student's B x 1 x L x L probabilities against the annotations' own masks,
        over the boxes that have one (`mask_valid`, see `mal.data.BoxCropDataset`)."""
        masks = (F.interpolate(batch["mask"], size=(size, size), mode="area") > 0.5).float()
        valid = batch["mask_valid"].float()
        return (dice_loss(student, masks) * valid).sum() / valid.sum().clamp(min=1.0)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.update_teacher()

    @torch.no_grad()
    def update_teacher(self) -> None:
        """teacher = m * teacher + (1 - m) * student."""
        momentum = self.hparams.teacher_momentum
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.lerp_(s.detach(), 1 - momentum)
        for t, s in zip(self.teacher.buffers(), self.student.buffers()):
            t.copy_(s)

    def configure_optimizers(self):
        hp = self.hparams
        scale = self.trainer.world_size * self.trainer.datamodule.batch_size
        optimizer = torch.optim.AdamW(
            self.student.parameters(),
            lr=hp.lr * scale,
            betas=tuple(hp.optim_betas),
            eps=hp.optim_eps,
            weight_decay=hp.weight_decay,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = min(int(round(total * hp.warmup_epochs / epochs)), total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(1, total - warmup), 1.0)
            return hp.min_lr_rate + (1 - hp.min_lr_rate) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict_image(self, sample: dict) -> list[dict]:
        """Masks for every box of one decoded image: [{x0, y0, mask (bool region), score, degenerate}]."""
        return self.predict_images([sample])[0]

    @torch.no_grad()
    def predict_images(self, samples: list[dict]) -> list[list[dict]]:
        """`predict_image` for several decoded images: the crops of all their boxes are packed into forward
        passes of up to `max_boxes_per_forward`, so that images with few boxes still fill a batch."""
        hp = self.hparams
        predicting = self._trainer is None or self.trainer.predicting  # not inside a fit: training would recompile
        if hp.get("compile_backbone") and predicting:
            for net in self.predicting_nets():
                compile_for_inference(net.backbone)
        counts = [len(sample["boxes"]) for sample in samples]
        crops = torch.cat([sample["crops"] for sample in samples]) if samples else None
        areas = torch.cat([box_areas(sample["boxes"]) for sample in samples]) if samples else None
        masks = torch.cat([sample["box_masks"] for sample in samples]) if samples else None

        def forward(chunk: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            images, box_masks = crops[chunk].to(self.device, non_blocking=True), masks[chunk].to(self.device)
            logits = self.mask_logits(self.normalise(images), areas[chunk].to(self.device))
            if hp.get("test_crf_num_iter"):
                logits = refine_logits(
                    logits,
                    images,
                    box_masks,
                    hp.test_crf_size,
                    hp.test_crf_kernel_size,
                    hp.crf_zeta,
                    hp.test_crf_num_iter,
                    hp.get("test_crf_colour_weight", 0.0),
                    high=self.by_size(self.unary_maxima, areas[chunk]).to(self.device),
                )
            thresholds = self.by_size(self.mask_thresholds, areas[chunk])
            if not hp.get("test_grabcut_num_iter"):
                return logits.cpu(), image_evidence(logits.sigmoid(), images, box_masks, thresholds).cpu(), None
            probs = F.interpolate(logits[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
            probs = probs[:, 0].sigmoid() * box_masks
            cuts = grabcut_masks(probs, images, box_masks, thresholds, hp.test_grabcut_sure, hp.test_grabcut_num_iter)
            # the evidence is read on the label's own mask, GrabCut's: Spearman 0.508 on coco128 against 0.478
            # on the refined mask's (BENCHMARKS.md)
            evidence = image_evidence(cuts.float(), images, box_masks, thresholds).cpu()
            return logits.cpu(), evidence, cuts.cpu()

        outputs = map_chunks(forward, sum(counts), hp.max_boxes_per_forward)  # fewer boxes at once on OOM
        size = self.student.logit_size
        logits = torch.cat([o[0] for o in outputs]) if outputs else torch.empty(0, size, size)
        evidence = torch.cat([o[1] for o in outputs]) if outputs else torch.empty(0)
        cuts = torch.cat([o[2] for o in outputs]).split(counts) if outputs and outputs[0][2] is not None else None
        return [
            self._paste_results(sample, image_logits, crop_evidence, cuts[k] if cuts else None)
            for k, (sample, image_logits, crop_evidence) in enumerate(
                zip(samples, logits.split(counts), evidence.split(counts))
            )
        ]

    @staticmethod
    def by_size(values: list[float], areas: torch.Tensor) -> torch.Tensor:
        """N values for N boxes (areas in pixels): each box's of the three `values` by its size bucket."""
        return torch.tensor(values)[size_bucket(areas.cpu())]

    def predicting_nets(self) -> list[MaskNet]:
        """The network(s) whose logits label the boxes: the student, the teacher, or both."""
        hp = self.hparams
        if hp.use_mixed_model_test:
            return [self.student, self.teacher]
        return [self.teacher if hp.use_teacher_test else self.student]

    def mask_logits(self, images: torch.Tensor, box_areas: torch.Tensor) -> torch.Tensor:
        """B x S x S crop logits (S = `MaskNet.logit_size`) of the predicting network(s), averaged over the
        student and teacher (`use_mixed_model_test`) and over each crop and its mirror image (`use_flip_test`)."""
        size = self.student.logit_size
        views = [False, True] if self.hparams.use_flip_test else [False]
        logits = []
        for net in self.predicting_nets():
            for flip in views:
                out = net(images.flip(-1) if flip else images, box_areas, size)[:, 0].float()
                logits.append(out.flip(-1) if flip else out)
        return torch.stack(logits).mean(dim=0)

    def _paste_results(
        self, sample: dict, logits: torch.Tensor, evidence: torch.Tensor, cuts: torch.Tensor | None = None
    ) -> list[dict]:
        """One image's crop logits pasted back into its boxes and thresholded (see `predict_image`), or its
        crops' GrabCut masks (`cuts`, N x C x C bool) pasted; each label's score is `mal.score.label_score` of
        its expected IoU under the pasted probabilities and its crop's image evidence."""
        height, width = sample["image"].shape[1:]
        boxes, crop_boxes = sample["boxes"], sample["crop_boxes"]
        thresholds = self.by_size(self.mask_thresholds, box_areas(boxes.cpu()))
        results = []
        for i, box in enumerate(boxes.tolist()):
            if is_degenerate(box, height, width):
                full = box_mask([box[0], box[1], box[2] - box[0], box[3] - box[1]], height, width)
                ys, xs = np.nonzero(full)
                region = full[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(bool)
                results.append(
                    {"x0": int(xs.min()), "y0": int(ys.min()), "mask": region, "score": 0.0, "degenerate": True}
                )
                continue
            where = (sample["box_masks"][i], crop_boxes[i].tolist(), (height, width))
            x0, y0, probs = paste_probabilities(logits[i], *where)
            mask = probs > thresholds[i]
            if cuts is not None:  # GrabCut's 0/1 mask as logits, pasted as the probabilities are
                mask = paste_probabilities(torch.logit(cuts[i].float(), eps=1e-6), *where)[2] > 0.5
            score = label_score(expected_iou(probs, mask), float(evidence[i]))
            results.append({"x0": x0, "y0": y0, "mask": mask.cpu().numpy(), "score": score, "degenerate": False})
        return results

    def on_predict_start(self) -> None:
        """fp32 on a GPU means the original's fp32 numerics: cuDNN's TF32 convolutions (PyTorch's default) are
        turned off for the run. With them, masks on ../shared/parity/mal fell to IoU 0.9967 (H200); without,
        1.0 (BENCHMARKS.md)."""
        self._cudnn_tf32 = torch.backends.cudnn.allow_tf32
        if self.device.type == "cuda" and str(self.trainer.precision) in ("32-true", "32"):
            torch.backends.cudnn.allow_tf32 = False

    def on_predict_end(self) -> None:
        torch.backends.cudnn.allow_tf32 = self._cudnn_tf32

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        """Per image: its sample's ids plus either `results` (one per box, in order) or `error`."""
        results = iter(self.predict_images([sample for sample in batch if "error" not in sample]))
        outputs = []
        for sample in batch:
            info = {k: sample[k] for k in ("image_pos", "image_id", "file_name", "ann_indices")}
            if "error" in sample:
                outputs.append({**info, "error": sample["error"]})
            else:
                info["size"] = tuple(sample["image"].shape[1:])
                outputs.append({**info, "results": next(results)})
        return outputs

    # --------------------------------------------------------------- evaluation
    def _evaluation_step(self, batch: list[dict]) -> None:
        for sample in batch:
            if "error" in sample:
                log.warning("skipping validation image %s: %s", sample["file_name"], sample["error"])
        scored = [sample for sample in batch if "error" not in sample and sample.get("gt_masks") is not None]
        for sample, results in zip(scored, self.predict_images(scored)):  # packed as in predict_step
            height, width = sample["image"].shape[1:]
            masks = full_masks([(r["x0"], r["y0"], r["mask"]) for r in results], height, width)
            keep = sample["gt_scored"]
            pred = torch.from_numpy(masks).bool()[keep]
            gt = sample["gt_masks"].bool()
            labels = sample["category_ids"][keep]
            self.iou_metric.update(mask_ious(pred, gt), labels, sample["gt_areas"])
            scores = torch.tensor([r["score"] for r in results])[keep]
            self.ap_metric.update(
                [{"masks": pred, "scores": scores, "labels": labels}], [{"masks": gt, "labels": labels}]
            )
            if len(self.overlays) < self.hparams.num_overlays:
                image = sample["image"].permute(1, 2, 0).numpy()
                boxes = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in sample["boxes"].tolist()]
                self.overlays.append(draw_overlay(image, list(masks), boxes))

    def _evaluation_epoch_end(self, stage: str) -> None:
        metrics = {f"{stage}/{k}": v for k, v in self.iou_metric.compute().items()}
        ap = self.ap_metric.compute()
        for name in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large"):
            if ap[name] >= 0:  # torchmetrics' -1: no instance of that size, a metric over nothing
                metrics[f"{stage}/mask_{name.replace('map', 'AP')}"] = ap[name].float()
        self.log_dict(metrics, sync_dist=True)
        self.iou_metric.reset()
        self.ap_metric.reset()
        if self.overlays and self.trainer.is_global_zero:
            log_image(self.loggers, f"{stage}/overlays", image_grid(self.overlays), self.global_step)
        self.overlays = []

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self._evaluation_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("val")

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self._evaluation_step(batch)

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")
