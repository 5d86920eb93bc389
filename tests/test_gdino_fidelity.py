"""Fidelity to the original Grounding DINO code, without the original code: its formulas are written out.

Boxes: IDEA's `inverse_sigmoid(x, eps=1e-3)` (groundingdino/util/misc.py) where transformers takes
`torch.special.logit(x, eps=1e-5)`, in the decoder's box refinement and in the box head. The two differ
only where a reference box coordinate is within 1e-3 of 0 or 1, so the model here is given weights that
put its boxes there. Pixels: IDEA's T.RandomResize([800], max_size=1333) + ToTensor + Normalize
(groundingdino/datasets/transforms.py, util/inference.py load_image) on coco128 images.
"""

import json
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import COCO128
from gdino_helpers import VOCAB_DIR, needs_vocab, tiny_model, to_idea_layout
from PIL import Image

from gdino.deformable import use_level_sampling
from gdino.fidelity import IdeaImageProcessor, idea_resize_size, inverse_sigmoid, use_original_numerics
from gdino.model import load_detector

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def idea_inverse_sigmoid(x: float, eps: float = 1e-3) -> float:
    """groundingdino/util/misc.py inverse_sigmoid, on one number: x clamped to [0, 1], then
    log(x1 / x2) with x1 = max(x, eps) and x2 = max(1 - x, eps)."""
    x = min(max(x, 0.0), 1.0)
    return math.log(max(x, eps) / max(1 - x, eps))


def idea_inverse_sigmoid_tensor(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The same, in IDEA's own torch ops (x.clamp(min=0, max=1); x.clamp(min=eps); (1 - x).clamp(min=eps))."""
    x = x.clamp(min=0, max=1)
    x1 = x.clamp(min=eps)
    x2 = (1 - x).clamp(min=eps)
    return torch.log(x1 / x2)


@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_inverse_sigmoid_is_the_originals_at_and_near_saturation(eps):
    points = [0.0, 1e-7, 1e-5, 1e-4, 5e-4, 1e-3, 2e-3, 0.3, 0.5, 0.998, 1 - 5e-4, 1 - 1e-4, 1 - 1e-6, 1.0, -0.2, 1.2]
    x = torch.tensor(points)
    ours = inverse_sigmoid(x, eps)
    assert torch.equal(ours, idea_inverse_sigmoid_tensor(x, eps))
    expected = torch.tensor([idea_inverse_sigmoid(v, eps) for v in x.double().tolist()])
    assert torch.allclose(ours.double(), expected.double(), rtol=1e-6, atol=1e-5)
    # where transformers and the original part ways: 6.91 vs 11.51 at x = 1 for IDEA's eps
    one = torch.tensor([1.0])
    assert inverse_sigmoid(one, 1e-3).item() == pytest.approx(math.log(1e3), rel=1e-6)
    assert torch.special.logit(one, eps=1e-5).item() == pytest.approx(11.51, abs=0.01)  # fp32 1 - 1e-5


def _saturating(model):
    """Make the first reference boxes saturate (width 1, height ~1e-13) and the refinements keep the
    height below 1e-3 (a -10 bias), where the original's inverse sigmoid and transformers' logit differ."""
    with torch.no_grad():
        model.model.encoder_output_bbox_embed.layers[-1].bias.copy_(torch.tensor([0.0, 0.0, 30.0, -30.0]))
        for head in [*model.bbox_embed, *model.model.decoder.bbox_embed]:
            head.layers[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -10.0]))
    return model


def _inputs():
    torch.manual_seed(1)
    ids = torch.tensor([[101, 2711, 1012, 2482, 1012, 102]])
    return {"pixel_values": torch.randn(1, 3, 96, 128), "input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _run(model):
    """The model's outputs and each decoder layer's (pre-norm) output, from which it refines boxes."""
    layer_outputs = []
    hooks = [
        layer.register_forward_hook(lambda _m, _args, out: layer_outputs.append(out[0]))
        for layer in model.model.decoder.layers
    ]
    try:
        with torch.no_grad():
            out = model(**_inputs())
    finally:
        for hook in hooks:
            hook.remove()
    return out, layer_outputs


def _check_box_numerics(model, refine_eps: float, head_eps: float) -> None:
    """Recompute every refinement and the final boxes from the model's own intermediate values with the
    original's formula; the same with transformers' logit must not match (so the check can fail)."""
    out, layer_outputs = _run(model)
    refs = [out.init_reference_points, *out.intermediate_reference_points.unbind(1)]
    assert (refs[0] == 1).any() and (refs[0] < 1e-3).any()  # the saturated case is exercised
    with torch.no_grad():
        for k, hidden in enumerate(layer_outputs):  # decoder: layer k refines the boxes it was given
            delta = model.model.decoder.bbox_embed[k](hidden)
            original = (delta + idea_inverse_sigmoid_tensor(refs[k], refine_eps)).sigmoid()
            transformers = (delta + torch.special.logit(refs[k], eps=1e-5)).sigmoid()
            assert torch.allclose(refs[k + 1], original, rtol=1e-5, atol=0), f"refinement {k}"
            assert not torch.allclose(refs[k + 1], transformers, rtol=1e-2, atol=0)
        # head: the last layer's normalised output on top of the boxes that layer was given
        delta = model.bbox_embed[-1](out.intermediate_hidden_states[:, -1])
        original = (delta + idea_inverse_sigmoid_tensor(refs[-2], head_eps)).sigmoid()
        assert torch.allclose(out.pred_boxes, original, rtol=1e-5, atol=0)
        if head_eps != 1e-5:
            transformers = (delta + torch.special.logit(refs[-2], eps=1e-5)).sigmoid()
            assert not torch.allclose(out.pred_boxes, transformers, rtol=1e-2, atol=0)


@pytest.fixture(scope="module")
def saturated(tmp_path_factory):
    """One tiny Grounding DINO with saturating boxes, saved as an HF directory and as an IDEA .pth."""
    torch.set_num_threads(1)
    model = _saturating(tiny_model(seed=5))
    root = tmp_path_factory.mktemp("saturated")
    model.save_pretrained(root / "hf")
    torch.save(to_idea_layout(model.state_dict()), root / "tiny.pth")
    (root / "config.json").write_text(json.dumps(model.config.to_dict()))
    return root


@needs_vocab
def test_both_sources_refine_and_predict_boxes_as_idea(saturated):
    from_dir = load_detector(str(saturated / "hf"), tokenizer=str(VOCAB_DIR)).model
    _check_box_numerics(from_dir, refine_eps=1e-3, head_eps=1e-3)
    from_pth = load_detector(
        str(saturated / "tiny.pth"), architecture=str(saturated / "config.json"), tokenizer=str(VOCAB_DIR)
    ).model
    (out, _), (out_pth, _) = _run(from_dir), _run(from_pth)
    assert torch.equal(out.logits, out_pth.logits)  # same weights, same labels
    assert torch.equal(out.pred_boxes, out_pth.pred_boxes)

    stock = _saturating(tiny_model(seed=5))  # transformers' own forward on the same weights
    use_level_sampling(stock)
    stock_out, _ = _run(stock)
    assert (stock_out.pred_boxes - out.pred_boxes).abs().max() > 1e-4


def test_mm_grounding_dino_refines_as_mmdet():
    """mmdet refines with inverse_sigmoid(eps=1e-3) (DinoTransformerDecoder) and predicts boxes with its
    default eps=1e-5 (GroundingDINOHead)."""
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    torch.set_num_threads(1)
    shared = ["backbone_config", "text_config", "d_model", "encoder_layers", "decoder_layers", "num_queries"]
    shared += ["max_text_len", "encoder_ffn_dim", "decoder_ffn_dim", "encoder_attention_heads"]
    shared += ["decoder_attention_heads"]
    config = MMGroundingDinoConfig(**{k: v for k, v in tiny_model().config.to_dict().items() if k in shared})
    torch.manual_seed(5)
    model = _saturating(MMGroundingDinoForObjectDetection(config).eval())
    use_level_sampling(model)
    use_original_numerics(model)
    _check_box_numerics(model, refine_eps=1e-3, head_eps=1e-5)


@pytest.mark.parametrize(
    "height, width, size, max_size, expected",
    [
        (480, 640, 800, 1333, (800, 1066)),
        (218, 640, 800, 1333, (454, 1332)),  # transformers' rule: 1333 columns
        (640, 218, 800, 1333, (1332, 454)),
        (800, 1000, 800, 1333, (800, 1000)),  # already the right size
        (1, 8, 800, 1333, (167, 1336)),  # IDEA rounds the short side first and may pass max_size
        (96, 128, 96, 160, (96, 128)),
    ],
)
def test_idea_resize_size(height, width, size, max_size, expected):
    assert idea_resize_size(height, width, size, max_size) == expected


@pytest.mark.skipif(not (COCO128 / "images").is_dir(), reason=f"coco128 images not found at {COCO128}")
@pytest.mark.parametrize("name", ["000000000009.jpg", "000000000357.jpg"])  # 640x480; 640x218 (long side differs)
def test_preprocessing_is_idea_pil_resize_to_tensor_normalize(name):
    image = Image.open(COCO128 / "images" / name).convert("RGB")
    width, height = image.size
    # IDEA's get_size_with_aspect_ratio, written out
    size = 800
    if max(width, height) / min(width, height) * size > 1333:
        size = int(round(1333 * min(width, height) / max(width, height)))
    oh, ow = (int(size * height / width), size) if width < height else (size, int(size * width / height))

    resized = TF.resize(image, (oh, ow))  # IDEA's T.resize: torchvision's resize of a PIL image ...
    assert np.array_equal(np.asarray(resized), np.asarray(image.resize((ow, oh), Image.BILINEAR)))  # ... is PIL's
    expected = TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)

    # as gdino.module calls it: decoded H x W x 3 uint8 arrays
    inputs = IdeaImageProcessor()([np.asarray(image)], return_tensors="pt", input_data_format="channels_last")
    assert inputs["pixel_values"].shape == (1, 3, oh, ow)
    assert torch.equal(inputs["pixel_values"][0], expected)
    assert bool(inputs["pixel_mask"].all())
