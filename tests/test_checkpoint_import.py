"""MAL weights in every layout we import land exactly where they belong.

The layouts are written out here as data, in the ORIGINAL names (NVlabs MAL Lightning `.ckpt`, TAO 5 and
TAO 6 `.pth`; REFERENCE.md section 2), with the name each tensor must take in our MaskNet, so that a
change of our module names cannot hide a wrong import.
"""

import pytest
import torch
from safetensors.torch import save_file

from mal.checkpoint import CheckpointError, describe_checkpoint, load_pretrained, with_architecture
from mal.model import build_mask_net

WIDTH, HIDDEN = 32, 8  # a tiny ViT (1 block) with the conv stem's stage widths 4, 8, 16, 32
STEM_WIDTHS = (4, 8, 16, 32)

# original MAL / TAO 5 backbone name -> shape (the 1x1 projection sits inside the last conv stage)
CONV_STEM = {
    **{
        f"backbone.patch_embed.proj.{i}.0.weight": (w, 3 if i == 0 else STEM_WIDTHS[i - 1], 3, 3)
        for i, w in enumerate(STEM_WIDTHS)
    },
    **{f"backbone.patch_embed.proj.{i}.1.{p}": (w,) for i, w in enumerate(STEM_WIDTHS) for p in ("weight", "bias")},
    "backbone.patch_embed.proj.3.3.weight": (WIDTH, WIDTH, 1, 1),
    "backbone.patch_embed.proj.3.3.bias": (WIDTH,),
}
TIMM_PATCH = {"backbone.patch_embed.proj.weight": (WIDTH, 3, 16, 16), "backbone.patch_embed.proj.bias": (WIDTH,)}
VIT = {
    "backbone.cls_token": (1, 1, WIDTH),
    "backbone.pos_embed": (1, 1 + 14 * 14, WIDTH),  # the 224-pixel pretraining grid, kept as it is
    "backbone.blocks.0.norm1.weight": (WIDTH,),
    "backbone.blocks.0.norm1.bias": (WIDTH,),
    "backbone.blocks.0.attn.qkv.weight": (3 * WIDTH, WIDTH),
    "backbone.blocks.0.attn.qkv.bias": (3 * WIDTH,),
    "backbone.blocks.0.attn.proj.weight": (WIDTH, WIDTH),
    "backbone.blocks.0.attn.proj.bias": (WIDTH,),
    "backbone.blocks.0.norm2.weight": (WIDTH,),
    "backbone.blocks.0.norm2.bias": (WIDTH,),
    "backbone.blocks.0.mlp.fc1.weight": (4 * WIDTH, WIDTH),
    "backbone.blocks.0.mlp.fc1.bias": (4 * WIDTH,),
    "backbone.blocks.0.mlp.fc2.weight": (WIDTH, 4 * WIDTH),
    "backbone.blocks.0.mlp.fc2.bias": (WIDTH,),
    "backbone.norm.weight": (WIDTH,),
    "backbone.norm.bias": (WIDTH,),
}
# original decoder name -> (shape, our MaskNet name)
DECODER = {
    "roi_head.mlp1.weight": ((HIDDEN, WIDTH), "decoder.key_mlp.0.weight"),
    "roi_head.mlp1.bias": ((HIDDEN,), "decoder.key_mlp.0.bias"),
    "roi_head.mlp2.weight": ((HIDDEN, HIDDEN), "decoder.key_mlp.2.weight"),
    "roi_head.mlp2.bias": ((HIDDEN,), "decoder.key_mlp.2.bias"),
    **{
        f"mask_head.convs.{i}.conv.weight": (
            (HIDDEN, WIDTH if i == 0 else HIDDEN, 3, 3),
            f"decoder.value_convs.{i}.0.weight",
        )
        for i in range(4)
    },
    **{f"mask_head.convs.{i}.conv.bias": ((HIDDEN,), f"decoder.value_convs.{i}.0.bias") for i in range(4)},
}


def original_state(conv_stem: bool, seed: int) -> tuple[dict, dict]:
    """(checkpoint state in original names, {branch: {our name: tensor}} it must load as)."""
    gen = torch.Generator().manual_seed(seed)
    state, ours = {}, {}
    backbone = {**VIT, **(CONV_STEM if conv_stem else TIMM_PATCH)}
    for branch in ("student", "teacher"):
        ours[branch] = {}
        for name, shape in backbone.items():
            state[f"{branch}.{name}"] = ours[branch][name] = torch.randn(shape, generator=gen)
        for name, (shape, our_name) in DECODER.items():
            state[f"{branch}.{name}"] = ours[branch][our_name] = torch.randn(shape, generator=gen)
    return state, ours


def target(conv_stem: bool):
    backbone = {"depth": 1, "embed_dim": WIDTH, "num_heads": 2}
    return build_mask_net(
        "vit_tiny_patch16_224", 64, conv_stem, backbone_kwargs=backbone, hidden_channels=HIDDEN, out_channels=HIDDEN
    ).eval()


def assert_loaded(net, expected: dict) -> None:
    state = net.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def lightning_1_9_file(state: dict) -> dict:
    """What the original's `Trainer.save_checkpoint` writes (pytorch_lightning 1.9.5), no hyperparameters."""
    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "1.9.5",
        "state_dict": state,
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
    }


@pytest.mark.parametrize(
    ("layout", "conv_stem"), [("original .ckpt", True), ("TAO 5 .pth", True), ("TAO 6 .pth", False)]
)
def test_every_original_layout_loads_student_and_teacher_where_they_belong(tmp_path, layout, conv_stem):
    state, ours = original_state(conv_stem, seed=1)
    path = tmp_path / "weights.pth"
    holder = {"original .ckpt": lightning_1_9_file, "TAO 5 .pth": lambda s: {"state_dict": s}}
    torch.save(holder.get(layout, lambda s: {"model": s})(state), path)
    info = describe_checkpoint(path)
    assert info["layout"] == "mal-original" and info["has_teacher"] and info["conv_stem"] == conv_stem
    assert (info["mask_head_num_convs"], info["mask_head_hidden_channel"], info["mask_head_out_channel"]) == (
        4,
        HIDDEN,
        HIDDEN,
    )
    assert info["backbone_kwargs"]["embed_dim"] == WIDTH and info["backbone_kwargs"]["depth"] == 1
    for branch in ("student", "teacher"):
        net = target(conv_stem)
        assert load_pretrained(net, path, branch) == "mal-original"
        assert_loaded(net, ours[branch])


def test_the_architecture_is_read_from_the_checkpoint(tmp_path):
    state, ours = original_state(True, seed=2)
    path = tmp_path / "original.ckpt"
    torch.save(lightning_1_9_file(state), path)
    args = with_architecture({"arch": "vit-mae-base/16", "backbone_kwargs": {"drop_rate": 0.0}}, path)
    assert args["conv_stem"] and args["mask_head_hidden_channel"] == HIDDEN
    assert args["backbone_kwargs"] == {"drop_rate": 0.0, "embed_dim": WIDTH, "depth": 1, "num_heads": 1, "mlp_ratio": 4}
    net = build_mask_net(
        args["arch"],
        64,
        args["conv_stem"],
        backbone_kwargs=args["backbone_kwargs"],
        hidden_channels=HIDDEN,
        out_channels=HIDDEN,
    )
    load_pretrained(net, path)
    assert_loaded(net, ours["student"])


def test_our_earlier_conv_stem_name_and_our_own_checkpoint(tmp_path):
    state, ours = original_state(True, seed=3)
    earlier = {}
    for key, value in state.items():
        branch, name = key.split(".", 1)
        name = next((our for orig, (_, our) in DECODER.items() if orig == name), name)
        earlier[f"{branch}.{name.replace('patch_embed.proj.3.3.', 'patch_embed.proj.4.')}"] = value
    path = tmp_path / "ours_before_fidelity.ckpt"
    torch.save({"state_dict": earlier, "hyper_parameters": {"arch": "vit_tiny_patch16_224", "crop_size": 64}}, path)
    info = describe_checkpoint(path)
    assert info["layout"] == "mal" and info["hparams"]["crop_size"] == 64
    net = target(True)
    assert load_pretrained(net, path, "teacher") == "mal"
    assert_loaded(net, ours["teacher"])


@pytest.mark.parametrize("kind", ["timm", "mae"])
def test_backbone_only_weights(tmp_path, kind):
    _, ours = original_state(False, seed=4)
    backbone = {k.removeprefix("backbone."): v for k, v in ours["student"].items() if k.startswith("backbone.")}
    if kind == "timm":  # a classifier head we do not use
        backbone.update({"head.weight": torch.zeros(10, WIDTH), "head.bias": torch.zeros(10)})
        path = tmp_path / "timm.pth"
        torch.save(backbone, path)
    else:  # MAE pre-training: encoder plus decoder keys and the mask token
        backbone.update({"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, WIDTH)})
        path = tmp_path / "mae.safetensors"
        save_file(backbone, str(path))
    net = target(False)
    assert load_pretrained(net, path) == "backbone"
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, ours["student"][f"backbone.{key}"]), key
    assert describe_checkpoint(path)["layout"] == "backbone"


def test_a_layout_that_does_not_fit_is_named_key_by_key(tmp_path):
    state, _ = original_state(True, seed=5)
    path = tmp_path / "stem.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: backbone\.patch_embed\.proj\.0\.0\.weight"):
        load_pretrained(target(False), path)  # conv-stem weights into a timm patch projection
    state["student.roi_head.mlp1.weight"] = torch.zeros(9, WIDTH)
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"wrong-shape keys: decoder\.key_mlp\.0\.weight: \(9, 32\) vs \(8, 32\)"):
        load_pretrained(target(True), path)


def test_the_configured_heads_stay_when_the_width_is_the_checkpoints(tmp_path):
    """The tensors cannot tell the number of attention heads: a configured ViT of the checkpoint's width keeps
    its own (here 2 at width 32); another width takes the standard ViT's for the checkpoint's width."""
    state, _ = original_state(True, seed=6)
    path = tmp_path / "original.ckpt"
    torch.save(lightning_1_9_file(state), path)
    same_width = {"arch": "vit_tiny_patch16_224", "backbone_kwargs": {"embed_dim": WIDTH, "num_heads": 2}}
    assert with_architecture(same_width, path)["backbone_kwargs"]["num_heads"] == 2
    assert with_architecture({"arch": "vit_tiny_patch16_224"}, path)["backbone_kwargs"]["num_heads"] == 1
