"""Tools that rewrite models work on vit_zoo as on timm's and transformers' own: PEFT's LoRA (merged back into the
weights), torchvision's FX feature extraction."""

import timm
import torch
from peft import LoraConfig, get_peft_model
from reference import TINY
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import vit_zoo  # noqa: F401  (registers the timm entries)

TINY_NAME = "vit_zoo_tiny_patch8_test_32"
IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
BLOCK_LINEARS = ["attn.out_proj", "mlp.c_fc", "mlp.c_proj"]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(TINY_NAME).eval()


def test_lora_on_every_linear_of_the_blocks_merges_into_the_same_model():
    model = tiny_model()
    with torch.no_grad():
        base = model(IMAGES)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=BLOCK_LINEARS, target_parameters=["attn.in_proj_weight"])
    adapted = get_peft_model(model, config)
    wrapped = {name for name, module in adapted.named_modules() if hasattr(module, "lora_A")}
    for block in range(TINY["layers"]):
        prefix = f"base_model.model.visual.transformer.resblocks.{block}."
        # `attn` carries the in_proj_weight adapter, and its out_proj moves under the wrapper's base_layer
        expected = ["attn", "attn.base_layer.out_proj", "mlp.c_fc", "mlp.c_proj"]
        assert {prefix + name for name in expected} == {name for name in wrapped if name.startswith(prefix)}
    with torch.no_grad():
        torch.testing.assert_close(adapted(IMAGES), base)  # LoRA starts as a no-op
    frozen = {name: p.detach().clone() for name, p in adapted.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    adapted.train()
    for _ in range(3):
        optimizer.zero_grad()
        adapted(IMAGES).square().mean().backward()
        optimizer.step()
    adapted.eval()
    assert all(torch.equal(p, frozen[name]) for name, p in adapted.named_parameters() if name in frozen)
    with torch.no_grad():
        tuned = adapted(IMAGES)
        assert (tuned - base).abs().max() > 1e-3  # the adapters learned something
        merged = adapted.merge_and_unload()
        assert type(merged.visual.transformer.resblocks[0].mlp.c_fc) is torch.nn.Linear
        torch.testing.assert_close(merged(IMAGES), tuned, rtol=1e-5, atol=1e-5)


def test_torchvision_feature_extractor_returns_a_block_output():
    model = tiny_model()
    train_nodes, eval_nodes = get_graph_node_names(model)
    block_output = "visual.transformer.resblocks.1.add_1"  # the second residual sum of block 1: its output tokens
    assert block_output in eval_nodes and block_output in train_nodes
    extractor = create_feature_extractor(model, return_nodes={block_output: "block1", "head": "embedding"})
    with torch.no_grad():
        features = extractor(IMAGES)
        hidden_states = model.visual.encode(IMAGES, hidden_states=True).hidden_states
        torch.testing.assert_close(features["block1"], hidden_states[2], rtol=0, atol=0)
        torch.testing.assert_close(features["embedding"], model(IMAGES), rtol=0, atol=0)
