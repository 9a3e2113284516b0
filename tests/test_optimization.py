"""Optimised inference paths give the baseline's predictions: folded BatchNorm, channels_last, oneDNN convs, bf16.

Speed is measured in benchmarks/bench_model.py, never here.
"""

import platform

import pytest
import torch
from conftest import randomise_batch_norms, reference_model, tiny_config
from torch import nn
from transformers import ResNetConfig

from fpn_seg import ResNetV1cConfig, SemanticFPNConfig, SemanticFPNForSemanticSegmentation
from fpn_seg.modeling_semantic_fpn import SemanticFPNConvBlock
from fpn_seg.optimization import (
    BatchNormFoldedSemanticFPN,
    FrozenCompiledModel,
    OneDNNConv2d,
    bf16_autocast,
    compile_for_inference,
    fold_batch_norm,
    fold_batch_norm_into_conv,
    is_batch_norm_folded,
    optimize_for_inference,
    prediction_agreement,
    retain_freed_memory,
    use_onednn_convs,
)

EXACT_TOLERANCE = 1e-4  # max |logits - baseline logits| of every exact (float32) path


def tiny_model(depth: int = 18, **kwargs) -> SemanticFPNForSemanticSegmentation:
    return randomise_batch_norms(SemanticFPNForSemanticSegmentation(tiny_config(depth=depth, **kwargs))).eval()


def model_with_backbone(backbone_config) -> SemanticFPNForSemanticSegmentation:
    config = SemanticFPNConfig(
        backbone_config=backbone_config, neck_channels=16, head_channels=8, id2label={0: "a", 1: "b", 2: "c"}
    )
    return randomise_batch_norms(SemanticFPNForSemanticSegmentation(config)).eval()


def logits_of(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(pixel_values=pixel_values).logits.float()


# ------------------------------------------------------------------------------------------------ BatchNorm folding


def test_fold_batch_norm_into_conv_matches_conv_then_norm():
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=True)
    norm = randomise_batch_norms(nn.Sequential(nn.BatchNorm2d(7, eps=1e-3))).eval()[0]
    hidden_states = torch.randn(2, 5, 11, 9)
    folded = fold_batch_norm_into_conv(conv, norm)
    with torch.no_grad():
        torch.testing.assert_close(folded(hidden_states), norm(conv(hidden_states)), rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="8 features, 7 outputs"):
        fold_batch_norm_into_conv(conv, nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match="no running statistics"):
        fold_batch_norm_into_conv(conv, nn.BatchNorm2d(7, track_running_stats=False))


@pytest.mark.parametrize("depth", [18, 50])
def test_folded_model_matches_eager_model(depth):
    model = tiny_model(depth)
    pixel_values = torch.randn(2, 3, 45, 61)
    keys_before = list(model.state_dict())

    folded = fold_batch_norm(model)

    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert is_batch_norm_folded(folded) and not is_batch_norm_folded(model)
    assert list(model.state_dict()) == keys_before  # the original keeps its mmseg-compatible layout
    expected = logits_of(model, pixel_values)
    assert (logits_of(folded, pixel_values) - expected).abs().max() <= EXACT_TOLERANCE


@pytest.mark.parametrize(
    "backbone", [dict(deep_stem=False), dict(avg_down=True, depth=50)], ids=["v1b-7x7-stem", "v1d-avg-down"]
)
def test_folding_covers_the_other_resnet_variants(backbone):
    backbone_config = ResNetV1cConfig(**{"depth": 18, "stem_channels": 8, "base_channels": 8, **backbone})
    model = model_with_backbone(backbone_config)
    pixel_values = torch.randn(1, 3, 41, 38)
    folded = fold_batch_norm(model)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert (logits_of(folded, pixel_values) - logits_of(model, pixel_values)).abs().max() <= EXACT_TOLERANCE


def test_folding_leaves_other_backbones_batch_norms_alone():
    stages = ["stage1", "stage2", "stage3", "stage4"]
    model = model_with_backbone(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=stages)
    )
    pixel_values = torch.randn(1, 3, 40, 40)
    folded = fold_batch_norm(model)
    head_norms = [block.norm for block in folded.decode_head.modules() if isinstance(block, SemanticFPNConvBlock)]
    assert all(isinstance(norm, nn.Identity) for norm in head_norms)  # the head is folded...
    assert any(isinstance(module, nn.BatchNorm2d) for module in folded.backbone.modules())  # ...the backbone is not
    assert (logits_of(folded, pixel_values) - logits_of(model, pixel_values)).abs().max() <= EXACT_TOLERANCE


def test_folded_copy_is_built_from_the_models_tensors_bit_for_bit():
    """`fold_batch_norm` builds its copy as a `BatchNormFoldedSemanticFPN` (no class swap): each folded conv is
    `fold_batch_norm_into_conv` of the model's pair, every other tensor the model's, bit for bit, with its strides."""
    model = tiny_model().to(memory_format=torch.channels_last)
    folded = fold_batch_norm(model)
    assert type(folded) is BatchNormFoldedSemanticFPN and not folded.training
    original, copied = model.state_dict(), folded.state_dict()
    folded_convs = {name.rpartition(".")[0] for name in copied if name.endswith(".bias") and name not in original}
    kept = [name for name in copied if name.rpartition(".")[0] not in folded_convs]
    assert len(folded_convs) == 29 and len(kept) == 18  # tiny R-18: stem, blocks, shortcuts, head / neck, classifier
    for name in kept:
        assert torch.equal(copied[name], original[name]) and copied[name].stride() == original[name].stride(), name
    block = model.decode_head.scale_heads[0][0]
    expected = fold_batch_norm_into_conv(block.conv, block.norm.eval())
    folded_conv = folded.decode_head.scale_heads[0][0].conv
    assert torch.equal(folded_conv.weight, expected.weight) and torch.equal(folded_conv.bias, expected.bias)
    assert all(not tensor.is_meta for tensor in [*folded.parameters(), *folded.buffers()])
    assert all(a is not b for a, b in zip(folded.parameters(), model.parameters()))  # a copy: the model untouched


def test_onednn_convs_hold_the_convs_own_parameters():
    """`use_onednn_convs` puts a constructed `OneDNNConv2d` in place of each plain conv (no class swap), holding that
    conv's very parameters and settings; a conv shared by two parents gets one replacement."""
    shared = nn.Conv2d(4, 4, 3, padding=1, dilation=1, bias=False)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, stride=2), shared, nn.Sequential(shared, nn.Conv2d(4, 2, 3, padding=2, dilation=2)))
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this torch build: use_onednn_convs leaves the convs as they are")
    parameters = [model[0].weight, model[0].bias, shared.weight, model[2][1].weight]
    assert use_onednn_convs(model) is model
    assert all(type(conv) is OneDNNConv2d for conv in [model[0], model[1], model[2][0], model[2][1]])
    assert model[1] is model[2][0]  # one replacement for the shared conv
    replaced = [model[0].weight, model[0].bias, model[1].weight, model[2][1].weight]
    assert all(a is b for a, b in zip(replaced, parameters))
    assert (model[0].stride, model[2][1].padding, model[2][1].dilation, model[1].bias) == ((2, 2), (2, 2), (2, 2), None)
    hidden_states = torch.randn(1, 3, 9, 11)
    reference = nn.functional.conv2d(hidden_states, parameters[0], parameters[1], stride=2)
    with torch.no_grad():
        torch.testing.assert_close(model[0](hidden_states), reference)


def test_folded_model_refuses_training_and_saving(tmp_path):
    folded = fold_batch_norm(tiny_model())
    with pytest.raises(RuntimeError, match="cannot be trained"):
        folded.train()
    with pytest.raises(RuntimeError, match="save the original"):
        folded.save_pretrained(tmp_path)
    assert not any(parameter.requires_grad for parameter in folded.parameters())
    folded.eval()  # still allowed
    # An eval-mode loss only depends on the logits, so it is allowed and equals the unfolded model's.
    model = tiny_model()
    pixel_values, labels = torch.randn(1, 3, 32, 32), torch.randint(0, 4, (1, 32, 32))
    with torch.no_grad():
        expected = model(pixel_values, labels=labels).loss
        assert torch.allclose(fold_batch_norm(model)(pixel_values, labels=labels).loss, expected, atol=1e-5)


def test_folding_the_mmseg_reference_model_keeps_its_logits():
    model, arrays = reference_model("fpn_r50_c19_97x130_w16_b2")
    folded = optimize_for_inference(model, channels_last=False, onednn_convs=False)
    logits = logits_of(folded, torch.from_numpy(arrays["pixel_values"]))
    assert (logits - torch.from_numpy(arrays["logits"])).abs().max() <= EXACT_TOLERANCE
    # Random weights leave near-ties, which float rounding may flip: a handful of pixels at most.
    assert (logits.argmax(1).numpy() == arrays["pred"]).mean() >= 0.999


# ---------------------------------------------------------------------------------------- exact optimised paths


@pytest.mark.parametrize(
    "switches",
    [
        dict(fold_batch_norm=False, channels_last=True, onednn_convs=False),
        dict(fold_batch_norm=False, channels_last=False, onednn_convs=True),
        dict(fold_batch_norm=True, channels_last=True, onednn_convs=False),
        dict(),  # the defaults: folded BatchNorm + channels_last + oneDNN convs
    ],
    ids=["channels_last", "onednn_convs", "fold+channels_last", "default"],
)
def test_optimized_paths_give_the_baseline_logits(switches):
    model = tiny_model(50)
    pixel_values = torch.randn(2, 3, 37, 50)
    optimized = optimize_for_inference(model, **switches)

    expected = logits_of(model, pixel_values)
    logits = logits_of(optimized, pixel_values)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max() <= EXACT_TOLERANCE
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert not is_batch_norm_folded(model) and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(type(module) is not OneDNNConv2d for module in model.modules())  # the argument is left untouched


def test_onednn_convs_are_used_in_fp32_and_step_aside_under_autocast():
    conv = use_onednn_convs(nn.Sequential(nn.Conv2d(8, 4, 1)))[0]
    assert type(conv) is OneDNNConv2d
    hidden_states = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(conv(hidden_states), nn.functional.conv2d(hidden_states, conv.weight, conv.bias))
        with bf16_autocast("cpu"):
            assert conv(hidden_states).dtype == torch.bfloat16  # autocast still casts the conv


def test_optimize_for_inference_rejects_bad_input():
    with pytest.raises(TypeError, match="must be an nn.Module"):
        optimize_for_inference("not a model")
    with pytest.raises(TypeError, match="no fold_batch_norm"):
        optimize_for_inference(nn.Sequential(nn.Conv2d(3, 3, 1)))


class ResidualConvBlock(nn.Module):
    """conv -> BN -> ReLU, conv -> BN, + shortcut, ReLU, x2 bilinear upsample: the model's patterns, small enough to
    compile in seconds (the full tiny model takes about a minute on two cores: the benchmark checks its logits)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.label = "kept"

    def forward(self, hidden_states):
        shortcut = hidden_states
        hidden_states = torch.relu(self.bn1(self.conv1(hidden_states)))
        hidden_states = torch.relu(self.bn2(self.conv2(hidden_states)) + shortcut)
        return nn.functional.interpolate(hidden_states, scale_factor=2.0, mode="bilinear", align_corners=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit use inside inductor
def test_compiled_model_freezes_fuses_and_matches_eager(one_thread):
    block = randomise_batch_norms(ResidualConvBlock()).eval()
    hidden_states = torch.randn(1, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    compiled = compile_for_inference(block.to(memory_format=torch.channels_last))
    assert isinstance(compiled, FrozenCompiledModel) and compiled.label == "kept"  # attributes of the model

    with torch.inference_mode():
        expected = block(hidden_states)
        torch.testing.assert_close(compiled(hidden_states), expected, rtol=1e-5, atol=1e-5)
        with torch.profiler.profile() as profile:
            compiled(hidden_states)
    ops = {event.key for event in profile.key_averages()}
    # Freezing took effect: the BatchNorms were folded and the convs became fused oneDNN calls.
    assert any(op.startswith("mkldnn::_convolution_pointwise") for op in ops), ops
    assert not any("batch_norm" in op for op in ops), ops


# ----------------------------------------------------------------------------------------------------- bfloat16

COLOURS = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5], [1.0, 1.0, 1.0]])


def colour_blocks(batch: int, generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic segmentation data: 2x2 blocks, each of a random class painted in its colour plus noise."""
    labels = torch.randint(0, 4, (batch, 2, 2), generator=generator)
    labels = labels.repeat_interleave(size // 2, 1).repeat_interleave(size // 2, 2)  # (B, size, size)
    pixel_values = COLOURS[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(batch, 3, size, size, generator=generator)
    return pixel_values, labels


@pytest.fixture
def one_thread():
    """Tiny convs run faster on one thread than on two contended ones; restores the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bf16_agrees_with_fp32_on_a_trained_model(one_thread):
    """The >= 99.5% argmax agreement of the issue, on a tiny model trained for a few seconds on colour blocks
    (random weights have near-zero logit margins, so agreement there says little)."""
    generator = torch.Generator().manual_seed(0)
    model = SemanticFPNForSemanticSegmentation(tiny_config(depth=18, classifier_dropout=0.0)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        pixel_values, labels = colour_blocks(8, generator)
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    pixel_values, labels = colour_blocks(16, torch.Generator().manual_seed(1))  # held out
    fp32_logits = logits_of(model, pixel_values)
    accuracy = (fp32_logits.argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.9  # the model learned the task (chance: 0.25)

    optimized = optimize_for_inference(model)
    with bf16_autocast("cpu"):
        bf16_logits = logits_of(model, pixel_values)
        optimized_bf16_logits = logits_of(optimized, pixel_values)
    agreements = [prediction_agreement(logits, fp32_logits) for logits in (bf16_logits, optimized_bf16_logits)]
    print(f"trained tiny model: accuracy {accuracy:.4f}, bf16 argmax agreement {agreements}")
    assert min(agreements) >= 0.995


@pytest.mark.parametrize(
    "name", ["fpn_r50_c19_97x130_w16_b2", "fpn_r101_c19_97x130_w16_b2", "fpn_r50_c150_64x96_w16"]
)
def test_bf16_agreement_on_reference_fixtures(name, capsys):
    """Reported, not held to 99.5%: random weights leave tiny logit margins. Sanity bound only."""
    model, arrays = reference_model(name)
    pixel_values = torch.from_numpy(arrays["pixel_values"])
    with bf16_autocast("cpu"):
        logits = logits_of(optimize_for_inference(model), pixel_values)
    agreement = prediction_agreement(logits, torch.from_numpy(arrays["logits"]))
    with capsys.disabled():
        print(f"\nbf16 argmax agreement with the mmseg fp32 logits, {name}: {100 * agreement:.2f}%")
    assert agreement >= 0.5


def test_prediction_agreement():
    reference = torch.zeros(1, 3, 2, 2)
    reference[0, 1] = 1.0  # class 1 everywhere
    logits = reference.clone()
    logits[0, 2, 0, 0] = 2.0  # one pixel of four switches to class 2
    assert prediction_agreement(logits, reference) == 0.75
    with pytest.raises(ValueError, match="same batch size and number of classes"):
        prediction_agreement(torch.zeros(1, 4, 2, 2), reference)


def test_retain_freed_memory_switches_and_keeps_logits():
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 40, 40)
    expected = logits_of(model, pixel_values)
    glibc = platform.libc_ver()[0] == "glibc"
    try:
        assert retain_freed_memory() is glibc  # a no-op returning False elsewhere
        assert torch.equal(logits_of(model, pixel_values), expected)
    finally:
        assert retain_freed_memory(False) is glibc
