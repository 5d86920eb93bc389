"""Reused backbone/text features give the same boxes with fewer runs; threshold annealing reads pass 0's scores."""

import pytest
import torch
from gdino_helpers import SMALL_SIZE, needs_vocab

from gdino.data import GroundingDinoDataModule
from gdino.module import GroundingDinoLabeler
from labelkit.synthetic import make_synthetic_coco

pytestmark = needs_vocab
# enough names for several caption chunks at the tiny model's max_text_len of 32
CLASSES = ["star", "ring", "traffic light", "ellipse", "rectangle", "triangle", "dog", "cat", "fire hydrant", "kite"]
CLASSES += ["baseball bat", "tennis racket", "wine glass", "hot dog", "potted plant", "cell phone", "teddy bear"]
THREE_PASSES = [{"conf_threshold": 1.0}, {"conf_threshold": 1.0}, {"conf_threshold": 0.0}]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_coco(root, num_images=3, height=96, width=128, seed=1)
    return root / "images"


def label(gdino_model_dir, image_dir, **model_kwargs):
    data = GroundingDinoDataModule(image_dir=str(image_dir), class_names=CLASSES, batch_size=3)
    labeler = GroundingDinoLabeler(str(gdino_model_dir), image_size=SMALL_SIZE, aggregation="none", **model_kwargs)
    labeler.set_vocabulary(data.vocabulary)
    calls = []
    scores = labeler._scores
    labeler._scores = lambda *args: calls.append(1) or scores(*args)
    with torch.inference_mode():
        records = [record for batch in data.predict_dataloader() for record in labeler.predict_step(batch)]
    return records, labeler, len(calls)


def detections(records, keys=("class", "pass", "threshold")):
    return [sorted((tuple(d[k] for k in keys), tuple(d["bbox"]), d["score"]) for d in r["detections"]) for r in records]


def assert_same_detections(reused, fresh):
    assert [r["passes"] for r in reused] == [r["passes"] for r in fresh]
    for a, b in zip(detections(reused), detections(fresh)):
        assert [x[:2] for x in a] == [x[:2] for x in b]
        assert [x[2] for x in a] == pytest.approx([x[2] for x in b], abs=2e-4)


def test_reused_features_give_the_same_boxes_with_one_backbone_run_per_batch(gdino_model_dir, image_dir):
    reused, labeler, forwards = label(gdino_model_dir, image_dir, iteration_scheduler=THREE_PASSES)
    fresh, plain, fresh_forwards = label(
        gdino_model_dir, image_dir, iteration_scheduler=THREE_PASSES, reuse_features=False
    )
    assert plain.feature_cache is None
    chunks = len(labeler.prompt_tokens.chunks(tuple(range(len(CLASSES)))))
    assert chunks >= 2 and fresh_forwards == 3 * chunks  # TAO's cost: 3 passes x chunks forwards
    # nothing passes 1.0, so passes 1 and 2 ask the very same captions: answered from pass 0's forwards
    assert forwards == chunks
    assert labeler.feature_cache.backbone_runs == 1  # one backbone run (one batch of same-size images)
    assert labeler.feature_cache.text_runs == chunks  # and each caption encoded once
    assert_same_detections(reused, fresh)


def test_only_captions_that_lost_a_found_class_run_again(gdino_model_dir, image_dir):
    # star (threshold 0) is found in pass 0 in every image; nothing else before pass 2
    kwargs = {"iteration_scheduler": THREE_PASSES, "class_thresholds": {"star": 0.0}}
    reused, labeler, forwards = label(gdino_model_dir, image_dir, **kwargs)
    fresh, _, fresh_forwards = label(gdino_model_dir, image_dir, reuse_features=False, **kwargs)
    chunks = labeler.prompt_tokens.chunks(tuple(range(len(CLASSES))))
    assert len(chunks) >= 2 and CLASSES.index("star") in chunks[0].prompts
    # pass 0: every caption; pass 1: only the first caption, less star; pass 2: nothing new
    assert forwards == len(chunks) + 1 and fresh_forwards == 3 * len(chunks)
    assert labeler.feature_cache.text_runs == len(chunks) + 1
    for record in reused:
        assert {d["pass"] for d in record["detections"] if d["class"] == "star"} == {0}
        assert {d["pass"] for d in record["detections"] if d["class"] != "star"} == {2}
    assert_same_detections(reused, fresh)


def test_threshold_annealing_rereads_pass_0_scores_without_another_forward(gdino_model_dir, image_dir):
    passes = [{"conf_threshold": 1.0}, {"conf_threshold": 0.0}]
    annealed, labeler, forwards = label(
        gdino_model_dir, image_dir, iteration_scheduler=passes, class_thresholds={"Star": 0.0}, annealing="threshold"
    )
    chunks = len(labeler.prompt_tokens.chunks(tuple(range(len(CLASSES)))))
    assert forwards == chunks  # pass 0 only
    once, _, _ = label(gdino_model_dir, image_dir, iteration_scheduler=[{"conf_threshold": 0.0}])
    for record, single in zip(annealed, once):
        assert record["passes"][0] == {"pass": 0, "queried": list(range(1, len(CLASSES) + 1))}
        assert record["passes"][1]["queried"] == list(range(2, len(CLASSES) + 1))  # star was found in pass 0
        # pass 0 finds star (its own threshold 0); pass 1 the other classes on the same scores at 0.0
        assert {d["pass"] for d in record["detections"] if d["class"] == "star"} == {0}
        assert {d["pass"] for d in record["detections"] if d["class"] != "star"} == {1}
        assert detections([record], ("class",)) == detections([single], ("class",))
    with pytest.raises(ValueError, match="model.annealing"):
        GroundingDinoLabeler(str(gdino_model_dir), annealing="sometimes")
