"""Multi-pass ("annealing") Grounding DINO labeling as a Lightning predict step.

Pass k asks the model only about the (image, class) pairs that have no box yet, with the k-th,
usually lower, confidence threshold; images with no detection at all are asked about every class
again (TAO never re-queries them). Labeling stops as soon as nothing is left to ask. A caption that an
image was already asked, unchanged since, is answered from that forward's scores: the model's answer
depends only on the image and the caption. Boxes from all chunks and passes are then merged (see
gdino.aggregate); each box keeps the pass and threshold that produced it.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torchvision.ops import batched_nms, box_convert

from gdino.aggregate import METHODS, aggregate
from gdino.cache import FeatureCache
from gdino.errors import GDinoError
from gdino.model import load_detector
from gdino.prompts import PromptTokenizer, sanitize_name
from gdino.schedule import ANNEALING_MODES, asked_prompts, build_schedule, class_threshold_table, select_pairs
from labelkit.oom import map_chunks
from labelkit.precision import accelerator_device, resolve_dtype_name


class GroundingDinoLabeler(L.LightningModule):
    """Label images with boxes from text prompts.

    Args:
        path: Hugging Face model directory (Grounding DINO or MM-Grounding-DINO) or original IDEA .pth.
        architecture: for a .pth only: tiny, base, or a config.json path.
        tokenizer: directory with the tokenizer (vocab.txt); defaults to the model directory.
        precision: fp32, bf16 or fp16 weights and activations, or auto: bf16 on a CUDA GPU with bf16 and on a CPU
            with native bf16 (AVX512-BF16 / AMX), fp16 on other CUDA GPUs, fp32 elsewhere (labelkit.precision),
            for the device Lightning's `accelerator: auto` picks (`gdino label` decides for its --trainer.accelerator).
        iteration_scheduler: TAO passes [{conf_threshold, nms_threshold}]; nms_threshold 0 = no NMS.
        schedule: generated passes {type: step|exponential|cosine, start, end, num_passes[, nms_threshold]}.
        class_thresholds: {class name: threshold} replacing the pass threshold for those classes.
        aggregation: merging of all chunks and passes: nms, agnostic_nms, dbscan, wbf or none.
        aggregation_iou: IoU at which boxes count as the same object for the aggregation.
        max_dets_per_image: keep at most this many boxes per image (best scores first).
        image_size: resize override {shortest_edge, longest_edge}; default: the model's processor.
        annealing: how later passes are made. requery (TAO's semantics): each later pass prompts only the
            classes still missing, with new captions (one forward per caption chunk and pass). threshold:
            one forward per chunk over the whole vocabulary; later passes lower the threshold on those same
            scores for the classes still missing (no further forward).
        reuse_features: run the image backbone once per batch and reuse its features in every pass and
            caption chunk; encode each caption once (not once per image and pass); answer a caption that an
            image was already asked (none of its classes found since) from that forward's scores instead of
            running it again. Same boxes, less work; false pays TAO's full cost (for comparisons).
    """

    def __init__(
        self,
        path: str,
        architecture: str | None = None,
        tokenizer: str | None = None,
        precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
        iteration_scheduler: list[dict] | None = None,
        schedule: dict | None = None,
        class_thresholds: dict[str, float] | None = None,
        aggregation: Literal["nms", "agnostic_nms", "dbscan", "wbf", "none"] = "nms",
        aggregation_iou: float = 0.5,
        max_dets_per_image: int | None = 100,
        image_size: dict[str, int] | None = None,
        annealing: Literal["requery", "threshold"] = "requery",
        reuse_features: bool = True,
    ):
        super().__init__()
        if annealing not in ANNEALING_MODES:
            raise GDinoError(f"model.annealing: must be one of {', '.join(ANNEALING_MODES)}; got {annealing!r}")
        if aggregation not in METHODS:
            raise GDinoError(f"model.aggregation: must be one of {', '.join(METHODS)}; got {aggregation!r}")
        if max_dets_per_image is not None and max_dets_per_image < 1:
            raise GDinoError(f"model.max_dets_per_image: must be >= 1 or null, got {max_dets_per_image}")
        if image_size is not None and set(image_size) != {"shortest_edge", "longest_edge"}:
            raise GDinoError(f"model.image_size: needs exactly shortest_edge and longest_edge, got {image_size}")
        self.passes = build_schedule(iteration_scheduler, schedule)
        self.class_thresholds = class_thresholds
        self.aggregation, self.aggregation_iou = aggregation, aggregation_iou
        self.max_dets = max_dets_per_image
        self.image_size = image_size
        self.precision_name, self.precision_reason = resolve_dtype_name(precision, accelerator_device("auto"))
        detector = load_detector(path, architecture, tokenizer, self.precision_name)
        self.model = detector.model
        self.tokenizer, self.image_processor = detector.tokenizer, detector.image_processor
        self.input_dtype = detector.dtype
        self.vocabulary = None
        self.annealing = annealing
        self.feature_cache = FeatureCache(self.model) if reuse_features else None
        self.reuse_answers = reuse_features

    def set_vocabulary(self, vocabulary) -> None:
        """Tokenise the prompts once and resolve per-class thresholds against the class names."""
        self.vocabulary = vocabulary
        self.prompt_tokens = PromptTokenizer(
            self.tokenizer, vocabulary.prompts, self.model.config.max_text_len, merge_identical=vocabulary.grounding
        )
        self.threshold_override = class_threshold_table(self.class_thresholds, vocabulary.class_names, sanitize_name)

    def on_predict_start(self) -> None:
        if self.vocabulary is None:
            self.set_vocabulary(self.trainer.datamodule.vocabulary)

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        """One output record per input image, in batch order; undecodable images give error records."""
        records = {}
        good = [r for r in batch if r["error"] is None]
        by_size: dict = {}
        for r in good:  # the sampler groups by header size; decoding is the final word
            by_size.setdefault(r["image"].shape[:2], []).append(r)
        for group in by_size.values():  # out of memory: the same images again, fewer at a time
            for part in map_chunks(lambda chunk, group=group: self.label_images(group[chunk]), len(group), len(group)):
                for record in part:
                    records[record["index"]] = record
        for r in batch:
            if r["error"] is not None:
                records[r["item"].index] = {
                    "index": r["item"].index,
                    "file_name": r["item"].file_name,
                    "error": r["error"],
                }
        return [records[r["item"].index] for r in batch]

    @torch.no_grad()
    def _scores(self, pixel_values, pixel_mask, chunk, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per (query, prompt) scores: token probabilities averaged over each prompt's span.

        `rows`: the positions of these images in the batch given to the feature cache (reused features).
        """
        n = pixel_values.shape[0]
        if self.feature_cache is not None and rows is not None:
            self.feature_cache.rows(rows)
        input_ids = torch.tensor([chunk.input_ids] * n, device=self.device)
        out = self.model(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            token_type_ids=torch.zeros_like(input_ids),
        )
        positive_map = chunk.positive_map(out.logits.shape[-1], self.device)
        return out.logits.float().sigmoid() @ positive_map.T, out.pred_boxes.float()

    def _answers(self, pixel_values, pixel_mask, chunk, scale, rows) -> list[tuple]:
        """One caption over same-size images: per image (boxes xyxy px, scores per query and prompt, prompts)."""
        scores, boxes = self._scores(pixel_values, pixel_mask, chunk, rows)
        xyxy = torch.minimum((box_convert(boxes, "cxcywh", "xyxy") * scale).clamp_min(0), scale)
        prompts = torch.tensor(chunk.prompts, device=self.device)
        return [(xyxy[j], scores[j], prompts) for j in range(len(scores))]

    def _select(self, answer: tuple, asked: set[int], step) -> tuple:
        """The (box, score, prompt, threshold) of one caption's answer above this pass's thresholds, for `asked`."""
        xyxy, scores, chunk_prompts = answer
        vocab = self.vocabulary
        prompts = chunk_prompts.tolist()
        thresholds = torch.tensor(
            [self.threshold_override.get(vocab.prompt_class[p], step.conf_threshold) for p in prompts],
            device=scores.device,
        )
        is_asked = torch.tensor([p in asked for p in prompts], device=scores.device)
        q, c = select_pairs(scores, torch.where(is_asked, thresholds, torch.inf))
        return xyxy[q], scores[q, c], chunk_prompts[c], thresholds[c]

    def _ask(self, step, asked, captions, last, pixel_values, pixel_mask, scale) -> list[list[tuple]]:
        """One pass: per image, the hits of each of its captions narrowed to the prompts still `asked`.

        `last[i][n]` holds image i's latest (prompts, answer) for its caption n and is updated here. A
        caption asked again unchanged (or any caption, under threshold annealing) is answered from it;
        the rest run as one forward per distinct caption over all the images that ask it.
        """
        hits: list[list[tuple]] = [[] for _ in asked]
        to_run: dict[tuple, tuple] = {}  # prompts -> (chunk, [(image, caption index)])
        for i, todo in enumerate(asked):
            todo = set(todo)
            for n, caption in enumerate(captions[i]):
                chunk = self.prompt_tokens.narrow(caption, todo)
                if chunk is None:
                    continue
                earlier = last[i].get(n)
                if earlier is not None and (
                    self.annealing == "threshold" or (self.reuse_answers and earlier[0] == chunk.prompts)
                ):
                    hits[i].append(self._select(earlier[1], todo, step))
                else:
                    to_run.setdefault(chunk.prompts, (chunk, []))[1].append((i, n))
        for chunk, members in to_run.values():
            rows = [i for i, _ in members]
            answers = self._answers(pixel_values[rows], pixel_mask[rows], chunk, scale, rows)
            for (i, n), answer in zip(members, answers):
                last[i][n] = (chunk.prompts, answer)
                hits[i].append(self._select(answer, set(chunk.prompts), step))
        return hits

    def label_images(self, records: list[dict]) -> list[dict]:
        """Run every pass over same-size images and return their merged detections.

        Each image's prompts are packed into captions once; pass k asks each caption again, less the
        classes already found. A caption that is the same as this image's last forward with it (nothing
        of it was found, or threshold annealing) is answered from that forward's scores.
        """
        vocab = self.vocabulary
        items = [r["item"] for r in records]
        height, width = records[0]["image"].shape[:2]
        kwargs = {"size": self.image_size} if self.image_size else {}
        # decoded images are always H x W x 3; say so, or a 1-pixel-wide image reads as channels-first
        images = [r["image"] for r in records]
        inputs = self.image_processor(images, return_tensors="pt", input_data_format="channels_last", **kwargs)
        pixel_values = inputs["pixel_values"].to(self.device, self.input_dtype)
        pixel_mask = inputs["pixel_mask"].to(self.device)
        scale = torch.tensor([width, height, width, height], device=self.device, dtype=torch.float32)
        prompt_class = torch.tensor(vocab.prompt_class, device=self.device)
        all_prompts = tuple(range(len(vocab.prompts)))
        image_prompts = [it.prompts if it.prompts is not None else all_prompts for it in items]
        captions = [self.prompt_tokens.chunks(prompts) for prompts in image_prompts]
        remaining = [{vocab.prompt_class[p] for p in prompts} for prompts in image_prompts]
        found: list[list[tuple]] = [[] for _ in items]  # per pass: (boxes, scores, prompts, thresholds, pass)
        trace: list[list[dict]] = [[] for _ in items]
        last: list[dict[int, tuple]] = [{} for _ in items]  # per image and caption: (prompts, answer) last asked
        if self.feature_cache is not None:
            self.feature_cache.begin(pixel_values, pixel_mask)
        try:
            for k, step in enumerate(self.passes):
                asked = asked_prompts(image_prompts, vocab.prompt_class, remaining)
                if not any(asked):
                    break
                for i, todo in enumerate(asked):
                    if todo:
                        queried = {vocab.category_ids[vocab.prompt_class[p]] for p in todo}
                        trace[i].append({"pass": k, "queried": sorted(queried)})
                new = self._ask(step, asked, captions, last, pixel_values, pixel_mask, scale)
                for i, parts in enumerate(new):
                    if not parts:  # not queried in this pass
                        continue
                    boxes, scores, prompts, thresholds = (torch.cat(t) for t in zip(*parts))
                    if len(boxes) == 0:
                        continue
                    if step.nms_threshold > 0:  # TAO's per-pass NMS, per class
                        keep = batched_nms(boxes, scores, prompt_class[prompts], step.nms_threshold).sort().values
                        boxes, scores, prompts, thresholds = (
                            boxes[keep],
                            scores[keep],
                            prompts[keep],
                            thresholds[keep],
                        )
                    remaining[i] -= set(prompt_class[prompts].tolist())
                    found[i].append((boxes, scores, prompts, thresholds, torch.full_like(prompts, k)))
        finally:  # also on an out-of-memory error, so that the retry gets the memory back
            if self.feature_cache is not None:
                self.feature_cache.end()
        return [self._record(it, height, width, parts, tr) for it, parts, tr in zip(items, found, trace)]

    def _record(self, item, height: int, width: int, parts: list[tuple], trace: list[dict]) -> dict:
        vocab = self.vocabulary
        record = {
            "index": item.index,
            "image_id": item.image_id,
            "file_name": item.file_name,
            "height": height,
            "width": width,
            "passes": trace,
            "detections": [],
        }
        if item.caption is not None:
            record["caption"] = item.caption
        if not parts:
            return record
        boxes, scores, prompts, thresholds, passes = (torch.cat(t).cpu() for t in zip(*parts))
        labels = torch.tensor([vocab.prompt_class[p] for p in prompts.tolist()])
        boxes, scores, source = aggregate(boxes, scores, labels, self.aggregation, self.aggregation_iou, self.max_dets)
        for box, score, s in zip(boxes.tolist(), scores.tolist(), source.tolist()):
            prompt = int(prompts[s])
            cls = vocab.prompt_class[prompt]
            x1, y1, x2, y2 = box
            record["detections"].append(
                {
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "category_id": vocab.category_ids[cls],
                    "class": vocab.class_names[cls],
                    "prompt": vocab.prompts[prompt],
                    "score": round(score, 4),
                    "pass": int(passes[s]),
                    "threshold": round(float(thresholds[s]), 6),
                }
            )
        return record
