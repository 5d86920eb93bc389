import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mal.backbone import create_vit, feature_map
from mal.checkpoint import CheckpointError, load_pretrained, read_checkpoint
from mal.decoder import size_bucket
from mal.model import build_mask_net
from mal.module import MALModule

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny_net(crop=64, **kwargs):
    return build_mask_net(
        "vit_tiny_patch16_224", crop, backbone_kwargs=dict(TINY), hidden_channels=8, out_channels=8, **kwargs
    )


def test_backbone_by_name_and_tao_alias():
    assert create_vit("vit-mae-base/16", 32, depth=1).embed_dim == 768
    with pytest.raises(ValueError, match="unknown backbone"):
        create_vit("no_such_vit", 64)
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        create_vit("vit_tiny_patch16_224", 72, **TINY)


def test_conv_stem_keeps_mal_key_layout_and_output_shape():
    net = tiny_net(conv_stem=True)
    keys = net.backbone.state_dict().keys()
    assert {"patch_embed.proj.0.0.weight", "patch_embed.proj.3.1.bias", "patch_embed.proj.3.3.weight"} <= set(keys)
    assert net(torch.randn(2, 3, 64, 64), torch.tensor([10.0, 1e5]), 32).shape == (2, 1, 32, 32)


def test_cpu_bf16_inference_uses_unfused_attention_with_the_same_result(monkeypatch):
    vit = create_vit("vit_tiny_patch16_224", 64, **TINY).eval()
    monkeypatch.setenv("AUTO_LABEL_CPU_BF16", "0")  # a CPU that emulates bf16: the fused kernel throughout
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        feature_map(vit, torch.randn(1, 3, 64, 64))
    assert all(m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn"))
    monkeypatch.setenv("AUTO_LABEL_CPU_BF16", "1")  # native bf16
    attentions = [m for m in vit.modules() if hasattr(m, "fused_attn")]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feature_map(vit, images)  # as in a training step (the teacher's forward): fused
        assert all(m.fused_attn for m in attentions)
    with torch.inference_mode():
        fused = feature_map(vit, images)
        assert all(m.fused_attn for m in attentions)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = feature_map(vit, images).float()
        assert not any(m.fused_attn for m in attentions)
        again = feature_map(vit, images)  # fp32 again: back to the fused kernel
    assert all(m.fused_attn for m in attentions)
    torch.testing.assert_close(again, fused)
    assert (bf16 - fused).abs().max() < 0.1 * fused.abs().max()


def test_size_buckets_cover_every_area():
    areas = torch.tensor([0.0, 1023.9, 1024.0, 9215.0, 9216.0, 1e9])
    assert size_bucket(areas).tolist() == [0, 0, 1, 1, 2, 2]


def test_backbone_weights_keep_their_position_embedding_grid_interpolated_at_every_forward(tmp_path):
    """As DINO / MAE / the original MAL: the embedding stays at its trained grid (here 2 x 2) and is resampled
    bicubically to the crop's grid (4 x 4) at each forward with scale factor (4 + 0.1) / 2."""
    source = create_vit("vit_tiny_patch16_224", 32, **TINY)  # 2x2 grid
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 32)  # a classifier head is ignored
    save_file(state, tmp_path / "mae.safetensors")
    net = tiny_net(crop=64)  # 4x4 grid
    assert load_pretrained(net, tmp_path / "mae.safetensors") == "backbone"
    assert torch.equal(net.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(net.backbone.pos_embed, source.pos_embed)  # (1, 1 + 2 * 2, 32), not resampled at load
    grid = source.pos_embed[:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    dino = F.interpolate(grid, scale_factor=(4.1 / 2, 4.1 / 2), mode="bicubic").flatten(2).transpose(1, 2)
    plain = F.interpolate(grid, size=(4, 4), mode="bicubic").flatten(2).transpose(1, 2)
    assert not torch.allclose(dino, plain, atol=1e-4)  # the 0.1 matters, so the check below can fail
    patches = net.backbone.patch_embed(torch.zeros(1, 3, 64, 64))
    tokens = net.backbone._pos_embed(patches)
    expected = torch.cat([source.cls_token + source.pos_embed[:, :1], patches + dino], dim=1)
    torch.testing.assert_close(tokens, expected)


def test_mal_checkpoint_round_trip(tmp_path):
    module = MALModule(
        arch="vit_tiny_patch16_224",
        crop_size=64,
        backbone_kwargs=dict(TINY),
        mask_head_hidden_channel=8,
        mask_head_out_channel=8,
    )
    torch.save({"state_dict": module.state_dict(), "epoch": 3}, tmp_path / "mal.ckpt")
    net = tiny_net()
    assert load_pretrained(net, tmp_path / "mal.ckpt") == "mal"
    x, areas = torch.randn(1, 3, 64, 64), torch.tensor([5000.0])
    assert torch.equal(net(x, areas, 16), module.student(x, areas, 16))


def test_mismatched_checkpoint_names_keys(tmp_path):
    torch.save({"model": {"blocks.0.norm1.weight": torch.zeros(3)}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing keys: .*wrong-shape keys: blocks.0.norm1.weight"):
        load_pretrained(tiny_net(), tmp_path / "bad.pth")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_checkpoint(tmp_path / "evil.pth")


def test_teacher_starts_as_a_copy_and_follows_by_ema():
    module = MALModule(
        arch="vit_tiny_patch16_224",
        crop_size=32,
        backbone_kwargs=dict(TINY),
        mask_head_hidden_channel=8,
        mask_head_out_channel=8,
        teacher_momentum=0.9,
    )
    student, teacher = module.student.decoder.key_mlp[0].weight, module.teacher.decoder.key_mlp[0].weight
    assert torch.equal(student, teacher) and not teacher.requires_grad
    before = teacher.clone()
    with torch.no_grad():
        student.add_(1.0)
    module.update_teacher()
    assert torch.allclose(teacher, before + 0.1, atol=1e-6)


def test_a_convolutional_backbone_by_name_at_a_chosen_stride():
    for stride in (8, 16):
        net = build_mask_net("resnet10t", 64, hidden_channels=8, out_channels=8, feature_stride=stride)
        assert net.logit_size == 4 * 64 // stride
        assert net(torch.randn(2, 3, 64, 64), torch.tensor([10.0, 1e5]), 32).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"strides \[2, 4, 8, 16, 32\], not at 12"):
        build_mask_net("resnet10t", 64, feature_stride=12)
    with pytest.raises(ValueError, match="not a ViT"):
        build_mask_net("resnet10t", 64, conv_stem=True)
