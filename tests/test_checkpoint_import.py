"""MAL weights in every layout we import land exactly where they belong, and give our model's outputs."""

import re

import pytest
import torch
from safetensors.torch import save_file

from mal.checkpoint import CheckpointError, describe_checkpoint, load_pretrained
from mal.model import build_mask_net

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def net(seed: int, conv_stem: bool):
    torch.manual_seed(seed)
    return build_mask_net(
        "vit_tiny_patch16_224", 64, conv_stem=conv_stem, backbone_kwargs=dict(TINY), hidden_channels=8, out_channels=8
    ).eval()


def original_name(key: str) -> str:
    """Our MaskNet name -> the original MAL / TAO name (written independently of mal.checkpoint)."""
    key = key.replace("decoder.key_mlp.0.", "roi_head.mlp1.").replace("decoder.key_mlp.2.", "roi_head.mlp2.")
    return re.sub(r"^decoder\.value_convs\.(\d+)\.0\.", r"mask_head.convs.\1.conv.", key)


def original_layout(student, teacher) -> dict:
    return {
        **{f"student.{original_name(k)}": v.clone() for k, v in student.state_dict().items()},
        **{f"teacher.{original_name(k)}": v.clone() for k, v in teacher.state_dict().items()},
    }


def assert_same(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    images, areas = torch.randn(3, 3, 64, 64), torch.tensor([100.0, 3000.0, 20000.0])
    with torch.no_grad():
        assert torch.equal(a(images, areas, 32), b(images, areas, 32))


def test_original_mal_lightning_checkpoint_with_conv_stem(tmp_path):
    student, teacher = net(1, conv_stem=True), net(2, conv_stem=True)
    state = original_layout(student, teacher)
    assert "student.backbone.patch_embed.proj.0.0.weight" in state  # conv stem: 4 x (conv, GroupNorm), then 1x1
    assert (
        "student.backbone.patch_embed.proj.3.1.bias" in state and "student.backbone.patch_embed.proj.4.weight" in state
    )
    assert "student.mask_head.convs.3.conv.weight" in state and "teacher.roi_head.mlp2.bias" in state
    path = tmp_path / "mal_original.ckpt"
    torch.save({"state_dict": state, "epoch": 9, "hyper_parameters": {"lr": 1e-6}}, path)
    info = describe_checkpoint(path)
    assert info["layout"] == "mal-original" and info["conv_stem"] and info["has_teacher"]
    assert (info["mask_head_num_convs"], info["mask_head_hidden_channel"], info["mask_head_out_channel"]) == (4, 8, 8)
    for branch, source in (("student", student), ("teacher", teacher)):
        target = net(3, conv_stem=True)
        assert load_pretrained(target, path, branch) == "mal-original"
        assert_same(target, source)


@pytest.mark.parametrize(("holder", "conv_stem"), [("state_dict", True), ("model", False)])
def test_tao5_and_tao6_pth(tmp_path, holder, conv_stem):
    """TAO 5 keeps the conv stem under `state_dict`; TAO 6 has timm's `patch_embed.proj.*` under `model`."""
    student, teacher = net(4, conv_stem), net(5, conv_stem)
    state = original_layout(student, teacher)
    assert ("student.backbone.patch_embed.proj.weight" in state) == (not conv_stem)
    path = tmp_path / "tao.pth"
    torch.save({holder: state}, path)
    target = net(6, conv_stem)
    assert load_pretrained(target, path) == "mal-original"
    assert_same(target, student)
    assert describe_checkpoint(path)["conv_stem"] == conv_stem


def test_our_own_checkpoint_and_its_teacher(tmp_path):
    student, teacher = net(7, False), net(8, False)
    state = {**{f"student.{k}": v for k, v in student.state_dict().items()}}
    state.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    path = tmp_path / "ours.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"arch": "vit_tiny_patch16_224", "crop_size": 64}}, path)
    info = describe_checkpoint(path)
    assert info["layout"] == "mal" and info["hparams"]["crop_size"] == 64
    target = net(9, False)
    assert load_pretrained(target, path, "teacher") == "mal"
    assert_same(target, teacher)


@pytest.mark.parametrize("kind", ["timm", "mae"])
def test_backbone_only_weights(tmp_path, kind):
    source = net(10, False)
    backbone = {k: v.clone() for k, v in source.backbone.state_dict().items()}
    if kind == "timm":  # a classifier head we do not use
        backbone.update({"head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)})
        path = tmp_path / "timm.pth"
        torch.save(backbone, path)
    else:  # MAE pre-training: encoder plus decoder keys and the mask token
        backbone.update({"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, 32)})
        path = tmp_path / "mae.safetensors"
        save_file(backbone, str(path))
    target = net(11, False)
    assert load_pretrained(target, path) == "backbone"
    assert all(torch.equal(v, source.backbone.state_dict()[k]) for k, v in target.backbone.state_dict().items())
    assert describe_checkpoint(path)["layout"] == "backbone"


def test_a_layout_that_does_not_fit_is_named_key_by_key(tmp_path):
    state = original_layout(net(12, True), net(13, True))
    path = tmp_path / "stem.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: backbone\.patch_embed\.proj\.0\.0\.weight"):
        load_pretrained(net(14, False), path)  # conv-stem weights into a timm patch projection
    state["student.roi_head.mlp1.weight"] = torch.zeros(9, 32)
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"wrong-shape keys: decoder\.key_mlp\.0\.weight: \(9, 32\) vs \(8, 32\)"):
        load_pretrained(net(15, True), path)
