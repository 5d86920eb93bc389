"""Model loading: HF directories through the Auto classes, original IDEA .pth through our converter."""

import json

import pytest
import torch
from gdino_helpers import SMALL_SIZE, VOCAB_DIR, needs_vocab, save_tiny_model_dir, tiny_model, to_idea_layout

from gdino.convert import convert_state_dict, strip_wrappers
from gdino.deformable import use_level_sampling
from gdino.errors import GDinoError
from gdino.fidelity import IdeaImageProcessor, use_original_numerics
from gdino.model import load_detector

pytestmark = needs_vocab

# Key names of the released groundingdino_swint_ogc.pth, one per kind of module.
KNOWN_IDEA_KEYS = [
    "module.backbone.0.patch_embed.proj.weight",
    "module.backbone.0.layers.0.blocks.0.attn.qkv.weight",
    "module.backbone.0.layers.0.blocks.0.attn.relative_position_bias_table",
    "module.backbone.0.layers.0.downsample.reduction.weight",
    "module.backbone.0.norm1.weight",
    "module.transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
    "module.transformer.encoder.text_layers.0.self_attn.in_proj_weight",
    "module.transformer.encoder.fusion_layers.0.gamma_v",
    "module.transformer.encoder.fusion_layers.0.attn.values_l_proj.weight",
    "module.transformer.decoder.layers.0.cross_attn.value_proj.weight",
    "module.transformer.decoder.layers.0.ca_text.in_proj_weight",
    "module.transformer.decoder.layers.0.catext_norm.weight",
    "module.transformer.decoder.ref_point_head.layers.0.weight",
    "module.transformer.tgt_embed.weight",
    "module.transformer.level_embed",
    "module.transformer.enc_out_bbox_embed.layers.0.weight",
    "module.bert.embeddings.word_embeddings.weight",
    "module.feat_map.weight",
    "module.input_proj.0.0.weight",
    "module.bbox_embed.0.layers.0.weight",
]


def _inputs():
    torch.manual_seed(1)
    ids = torch.tensor([[101, 2711, 1012, 2482, 1012, 102]])
    return {
        "pixel_values": torch.randn(1, 3, 96, 128),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
    }


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    model = tiny_model(seed=3)
    use_level_sampling(model)  # as load_detector does, so that outputs compare exactly
    use_original_numerics(model)
    with torch.no_grad():
        out = model(**_inputs())
    return model, out


def test_idea_checkpoint_converts_every_key_and_reproduces_outputs(tmp_path, reference):
    model, expected = reference
    checkpoint = to_idea_layout(model.state_dict())
    checkpoint["model"]["module.backbone.0.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(3)
    assert set(KNOWN_IDEA_KEYS) <= set(checkpoint["model"])
    converted, ignored = convert_state_dict(strip_wrappers(checkpoint))
    assert ignored == ["backbone.0.layers.0.blocks.0.attn.relative_position_index"]
    hf_keys = {k for k in model.state_dict() if "swin.layernorm." not in k}
    assert set(converted) == hf_keys

    path = tmp_path / "groundingdino_tiny.pth"
    torch.save(checkpoint, path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(model.config.to_dict()))
    detector = load_detector(str(path), architecture=str(config), tokenizer=str(VOCAB_DIR))
    with torch.no_grad():
        out = detector.model(**_inputs())
    assert torch.equal(out.logits, expected.logits)
    assert torch.equal(out.pred_boxes, expected.pred_boxes)
    assert detector.tokenizer("a cat")["input_ids"] == [101, 1037, 4937, 102]
    assert type(detector.image_processor) is IdeaImageProcessor
    assert detector.image_processor.size.shortest_edge == 800 and detector.image_processor.size.longest_edge == 1333


def test_unknown_or_missing_checkpoint_keys_are_listed(tmp_path, reference):
    model, _ = reference
    config = tmp_path / "config.json"
    config.write_text(json.dumps(model.config.to_dict()))
    checkpoint = to_idea_layout(model.state_dict())
    checkpoint["model"]["module.label_enc.weight"] = torch.zeros(2, 2)
    with pytest.raises(GDinoError, match=r"no known mapping[\s\S]*label_enc.weight"):
        convert_state_dict(strip_wrappers(checkpoint))

    del checkpoint["model"]["module.label_enc.weight"]
    del checkpoint["model"]["module.feat_map.weight"]
    path = tmp_path / "partial.pth"
    torch.save(checkpoint, path)
    with pytest.raises(
        GDinoError,
        match=r"partial.pth: checkpoint does not fit[\s\S]*missing keys \(1\)"
        r"[\s\S]*model.text_projection.weight",
    ):
        load_detector(str(path), architecture=str(config), tokenizer=str(VOCAB_DIR))
    with pytest.raises(GDinoError, match="architecture: required"):
        load_detector(str(path), tokenizer=str(VOCAB_DIR))


def test_hf_directory_loads_through_auto_classes_in_each_precision(tmp_path, reference):
    model, expected = reference
    directory = save_tiny_model_dir(tmp_path / "tiny", seed=3)
    settings = json.loads((directory / "processor_config.json").read_text())
    settings["image_processor"].update(size=SMALL_SIZE, image_mean=[0.5, 0.5, 0.5])
    (directory / "processor_config.json").write_text(json.dumps(settings))
    detector = load_detector(str(directory))
    assert type(detector.model).__name__ == "GroundingDinoForObjectDetection"
    with torch.no_grad():
        out = detector.model(**_inputs())
    assert torch.equal(out.logits, expected.logits)
    assert torch.equal(out.pred_boxes, expected.pred_boxes)
    # IDEA's PIL preprocessing, with the directory's own resize and normalise settings
    assert type(detector.image_processor) is IdeaImageProcessor
    assert detector.image_processor.size.shortest_edge == SMALL_SIZE["shortest_edge"]
    assert list(detector.image_processor.image_mean) == [0.5, 0.5, 0.5]
    bf16 = load_detector(str(directory), precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(GDinoError, match="model.precision"):
        load_detector(str(directory), precision="int8")


def test_deformable_sampling_is_transformers_sum_in_fp32(tmp_path):
    # CPU grid_sample in bf16 returns garbage on the strided maps deformable attention samples (torch 2.15)
    model = load_detector(str(save_tiny_model_dir(tmp_path / "tiny", seed=3)), precision="bf16").model
    attn = next(m for m in model.modules() if type(m).__name__ == "MultiScaleDeformableAttention")
    torch.manual_seed(0)
    shapes = [(24, 32), (12, 16), (6, 8), (3, 4)]
    length, heads, queries = sum(h * w for h, w in shapes), 8, 300
    starts = torch.tensor([0] + [h * w for h, w in shapes[:-1]]).cumsum(0)
    value = torch.randn(1, length, heads * 32).view(1, length, heads, 32)  # as value_proj(...).view(...)
    locations = torch.rand(1, queries, heads, len(shapes), 4, 2)
    weights = torch.rand(1, queries, heads, len(shapes), 4).softmax(-1)
    value, locations, weights = (t.bfloat16() for t in (value, locations, weights))
    args = (torch.tensor(shapes), shapes, starts)
    expected = type(attn).forward(attn, value.float(), *args, locations.float(), weights.float(), 64)
    out = attn(value, *args, locations, weights, 64)
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    assert (out.float() - expected).abs().max() < 0.02  # the output's own bf16 rounding
    # level by level, the same sums as transformers' stacked implementation
    same = attn(value.float(), *args, locations.float(), weights.float(), 64)
    assert same.dtype == torch.float32 and torch.allclose(same, expected, atol=1e-5)


def test_mm_grounding_dino_directory_loads_through_auto_classes(tmp_path):
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    config = MMGroundingDinoConfig(
        **{
            k: v
            for k, v in tiny_model().config.to_dict().items()
            if k
            in (
                "backbone_config",
                "text_config",
                "d_model",
                "encoder_layers",
                "decoder_layers",
                "num_queries",
                "max_text_len",
                "encoder_ffn_dim",
                "decoder_ffn_dim",
                "encoder_attention_heads",
                "decoder_attention_heads",
            )
        }
    )
    MMGroundingDinoForObjectDetection(config).save_pretrained(tmp_path)
    detector = load_detector(str(tmp_path), tokenizer=str(VOCAB_DIR))
    assert type(detector.model).__name__ == "MMGroundingDinoForObjectDetection"
    assert type(detector.image_processor) is IdeaImageProcessor  # the directory has no processor files


def test_hf_directory_with_a_missing_weight_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = save_tiny_model_dir(tmp_path / "tiny")
    weights = load_file(directory / "model.safetensors")
    del weights["model.text_projection.weight"]
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(GDinoError, match=r"missing keys[\s\S]*text_projection.weight"):
        load_detector(str(directory))
    with pytest.raises(GDinoError, match="does not exist"):
        load_detector(str(tmp_path / "nowhere"))
