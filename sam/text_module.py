"""Text -> boxes + masks with SAM 3 as a Lightning predict step, on Grounding DINO's inputs and passes.

The vocabulary (class names, ontology synonyms, per-image noun chunks, a COCO file's categories), the
pass schedule (TAO's `iteration_scheduler` or a generated falling schedule), per-class thresholds and the
aggregation are Grounding DINO's (gdino.data, gdino.schedule, gdino.aggregate), with its meaning: pass k
keeps, for each (image, class) that has no box yet, the instances scoring above its threshold; a class
found in an image is not asked again there. SAM 3 answers one concept at a time and its answer does not
depend on the other concepts, so every (image, prompt) pair is run once, in the first pass that asks it,
keeping its instances above the lowest threshold any pass could apply; later passes select from them
(no further forward). Boxes from all passes are merged by the aggregation; each keeps its own mask (for
fused boxes, wbf and dbscan, the mask of the best-scoring member), pass and threshold.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torchvision.ops import batched_nms

from gdino.aggregate import METHODS, aggregate
from gdino.module import GroundingDinoLabeler
from gdino.prompts import sanitize_name
from gdino.schedule import asked_prompts, build_schedule, class_threshold_table
from labelkit.masks import masks_to_rles
from labelkit.precision import accelerator_device, resolve_dtype_name
from sam.concepts import Answer, load_concept_segmenter, upscale_masks
from sam.errors import SamError


class Sam3Labeler(L.LightningModule):
    """Label images with boxes and masks of every instance of text concepts (SAM 3).

    Args:
        path: local Hugging Face directory of SAM 3 (config.json, weights, processor and tokenizer files),
            e.g. a download of facebook/sam3.
        precision: fp32, bf16 or fp16 weights and activations, or auto: bf16 on a CUDA GPU with bf16 and on a CPU
            with native bf16 (AVX512-BF16 / AMX), fp16 on other CUDA GPUs, fp32 elsewhere (labelkit.precision).
            Masks are upscaled in fp32.
        iteration_scheduler: TAO passes [{conf_threshold, nms_threshold}]; nms_threshold 0 = no NMS.
        schedule: generated passes {type: step|exponential|cosine, start, end, num_passes[, nms_threshold]}.
        class_thresholds: {class name: threshold} replacing the pass threshold for those classes.
        aggregation: merging of all passes: nms, agnostic_nms, dbscan, wbf or none.
        aggregation_iou: IoU at which boxes count as the same object for the aggregation.
        max_dets_per_image: keep at most this many instances per image (best scores first).
    """

    image_size = None  # the processor's (for the writer's run fingerprint, shared with Grounding DINO)
    annealing = "threshold"  # later passes select from the first forward's answers

    def __init__(
        self,
        path: str,
        precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
        iteration_scheduler: list[dict] | None = None,
        schedule: dict | None = None,
        class_thresholds: dict[str, float] | None = None,
        aggregation: Literal["nms", "agnostic_nms", "dbscan", "wbf", "none"] = "nms",
        aggregation_iou: float = 0.5,
        max_dets_per_image: int | None = 100,
    ):
        super().__init__()
        if aggregation not in METHODS:
            raise SamError(f"model.aggregation: must be one of {', '.join(METHODS)}; got {aggregation!r}")
        if max_dets_per_image is not None and max_dets_per_image < 1:
            raise SamError(f"model.max_dets_per_image: must be >= 1 or null, got {max_dets_per_image}")
        self.passes = build_schedule(iteration_scheduler, schedule)
        self.class_thresholds = class_thresholds
        self.aggregation, self.aggregation_iou, self.max_dets = aggregation, aggregation_iou, max_dets_per_image
        self.precision_name, self.precision_reason = resolve_dtype_name(precision, accelerator_device("auto"))
        self.segmenter = load_concept_segmenter(path, self.precision_name)
        self.model = self.segmenter.model  # registered, so that Lightning moves it and the writer hashes it
        self.input_dtype = self.segmenter.dtype
        self.vocabulary = None

    def set_vocabulary(self, vocabulary) -> None:
        """Resolve per-class thresholds against the class names; the lowest threshold each prompt can meet."""
        self.vocabulary = vocabulary
        self.threshold_override = class_threshold_table(self.class_thresholds, vocabulary.class_names, sanitize_name)
        lowest = min(p.conf_threshold for p in self.passes)
        self.floors = [self.threshold_override.get(c, lowest) for c in vocabulary.prompt_class]

    def on_predict_start(self) -> None:
        if self.vocabulary is None:
            self.set_vocabulary(self.trainer.datamodule.vocabulary)

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        """One output record per input image, in batch order; undecodable images give error records."""
        good = [r for r in batch if r["error"] is None]
        labelled = iter(self.label_images(good) if good else [])
        records = []
        for r in batch:
            if r["error"] is None:
                records.append(next(labelled))
            else:
                records.append({"index": r["item"].index, "file_name": r["item"].file_name, "error": r["error"]})
        return records

    def _threshold(self, prompt: int, step) -> float:
        return self.threshold_override.get(self.vocabulary.prompt_class[prompt], step.conf_threshold)

    @torch.no_grad()
    def label_images(self, records: list[dict]) -> list[dict]:
        """Every pass over a batch of images (one forward per (image, prompt), the first time it is asked)."""
        vocab = self.vocabulary
        items = [r["item"] for r in records]
        sizes = [tuple(r["image"].shape[:2]) for r in records]
        vision = self.segmenter.embed([r["image"] for r in records])
        all_prompts = tuple(range(len(vocab.prompts)))
        image_prompts = [it.prompts if it.prompts is not None else all_prompts for it in items]
        remaining = [{vocab.prompt_class[p] for p in prompts} for prompts in image_prompts]
        answers: list[dict[int, Answer]] = [{} for _ in items]
        found: list[list[tuple]] = [[] for _ in items]  # (boxes, scores, prompts, thresholds, passes, masks)
        trace: list[list[dict]] = [[] for _ in items]
        for k, step in enumerate(self.passes):
            asked = asked_prompts(image_prompts, vocab.prompt_class, remaining)
            if not any(asked):
                break
            self._answer_new(vision, asked, answers, sizes)
            for i, todo in enumerate(asked):
                if not todo:
                    continue
                queried = {vocab.category_ids[vocab.prompt_class[p]] for p in todo}
                trace[i].append({"pass": k, "queried": sorted(queried)})
                hits = self._hits(answers[i], todo, step, k)
                if hits is not None:
                    remaining[i] -= set(vocab.prompt_class[p] for p in hits[2].tolist())
                    found[i].append(hits)
        return [self._record(it, size, parts, tr) for it, size, parts, tr in zip(items, sizes, found, trace)]

    def _answer_new(self, vision, asked: list[tuple[int, ...]], answers: list[dict], sizes: list) -> None:
        """Run each prompt once over the images that ask it for the first time."""
        rows_of: dict[int, list[int]] = {}
        for i, todo in enumerate(asked):
            for p in todo:
                if p not in answers[i]:
                    rows_of.setdefault(p, []).append(i)
        for p, rows in rows_of.items():
            text, floor = self.vocabulary.prompts[p], self.floors[p]
            for i, answer in zip(rows, self.segmenter.answer(vision, rows, text, [sizes[i] for i in rows], floor)):
                answers[i][p] = answer

    def _hits(self, answers: dict[int, Answer], todo: tuple[int, ...], step, k: int) -> tuple | None:
        """One image's instances above pass `k`'s thresholds among the prompts `todo`, after the pass's NMS:
        (boxes, scores, prompts, thresholds, passes, mask logits), or None when there is none."""
        chosen = [(p, answers[p]) for p in todo]
        fields = ("boxes", "scores", "mask_logits")
        boxes, scores, masks = (torch.cat([getattr(a, f) for _, a in chosen]) for f in fields)
        prompts = torch.cat([torch.full_like(a.scores, p, dtype=torch.long) for p, a in chosen])
        thresholds = torch.cat([torch.full_like(a.scores, self._threshold(p, step)) for p, a in chosen])
        keep = torch.nonzero(scores > thresholds).flatten()  # TAO's strict '>'
        if step.nms_threshold > 0 and len(keep):  # TAO's per-pass NMS, per class
            classes = torch.tensor([self.vocabulary.prompt_class[p] for p in prompts[keep].tolist()])
            kept = batched_nms(boxes[keep], scores[keep], classes.to(keep.device), step.nms_threshold)
            keep = keep[kept.sort().values]
        if not len(keep):
            return None
        passes = torch.full_like(keep, k)
        return boxes[keep], scores[keep], prompts[keep], thresholds[keep], passes, masks[keep]

    def _record(self, item, size: tuple[int, int], parts: list[tuple], trace: list[dict]) -> dict:
        """Grounding DINO's record of the merged detections, each with its mask (RLE) and `mask_area`."""
        record = GroundingDinoLabeler._record(self, item, *size, [part[:5] for part in parts], trace)
        if not parts:
            return record
        # the same merge again (deterministic): the rows the record's detections come from
        boxes, scores, prompts = (torch.cat([part[j] for part in parts]).cpu() for j in range(3))
        labels = torch.tensor([self.vocabulary.prompt_class[p] for p in prompts.tolist()])
        source = aggregate(boxes, scores, labels, self.aggregation, self.aggregation_iou, self.max_dets)[2]
        masks = torch.cat([part[5] for part in parts])
        full = upscale_masks(masks[source.to(masks.device)], size).cpu().numpy()
        for detection, rle, area in zip(record["detections"], masks_to_rles(full), full.sum(axis=(1, 2))):
            detection.update(segmentation=rle, mask_area=int(area))
        return record
