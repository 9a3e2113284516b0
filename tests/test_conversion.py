"""Checkpoint conversion (`fpn_seg.conversion`, `conversion/convert_mmseg_checkpoint.py`): mmseg parity through the written
folders, the official key layout for the four seed models, ImageNet backbone mode, and every refusal.

No network: every checkpoint is a local file (the reference fixtures or one built here).
"""

import argparse
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_reference, run_without_fpn_seg
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoBackbone, AutoConfig

from fpn_seg import ResNetV1cBackbone, ResNetV1cConfig, SemanticFPNForSemanticSegmentation
from fpn_seg.conversion import (
    OFFICIAL_CHECKPOINTS,
    ChecksumError,
    ConversionError,
    OutputExistsError,
    UnsafeCheckpointError,
    convert_semantic_fpn,
    file_sha256,
    get_imagenet_backbone,
    get_official_checkpoint,
    main,
    sha256_prefix_in_name,
)
from fpn_seg.backbone_weights import load_pretrained_backbone, semantic_fpn_from_pretrained_backbone
from fpn_seg.label_sets import ADE20K_CLASSES, CITYSCAPES_CLASSES
from fpn_seg.conversion import CheckpointMismatchError
from fpn_seg.presets import preset_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI = REPO_ROOT / "conversion" / "convert_mmseg_checkpoint.py"

FIXTURE_PRESETS = {
    "fpn_r50_c19_97x130_w16_b2": "fpn_r50_512x1024_80k_cityscapes",
    "fpn_r101_c19_97x130_w16_b2": "fpn_r101_512x1024_80k_cityscapes",
    "fpn_r50_c150_64x96_w16": "fpn_r50_512x512_160k_ade20k",
}
LAYOUT_PRESETS = {
    "fpn_r50_cityscapes": "fpn_r50_512x1024_80k_cityscapes",
    "fpn_r101_cityscapes": "fpn_r101_512x1024_80k_cityscapes",
    "fpn_r50_ade20k": "fpn_r50_512x512_160k_ade20k",
    "fpn_r101_ade20k": "fpn_r101_512x512_160k_ade20k",
}
MODEL_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_semantic_fpn.py"}


def reference_logits(model: torch.nn.Module, arrays: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(arrays["pixel_values"])).logits


def assert_nothing_written(parent: Path, name: str = "out") -> None:
    """Neither the output folder nor a temporary sibling of it exists."""
    leftovers = [path.name for path in parent.iterdir() if path.name == name or path.name.startswith(f".{name}.")]
    assert leftovers == [], leftovers


# ---------------------------------------------------------------------------------------- parity on the fixtures


@pytest.mark.parametrize("name", sorted(FIXTURE_PRESETS))
def test_converted_fixture_reproduces_mmseg_logits(name, tmp_path):
    arrays, _ = load_reference(name)
    preset = FIXTURE_PRESETS[name]
    report = convert_semantic_fpn(
        FIXTURES / f"{name}.pth", tmp_path / "out", preset=preset, verify=FIXTURES / f"{name}.npz"
    )

    model = SemanticFPNForSemanticSegmentation.from_pretrained(tmp_path / "out")
    logits = reference_logits(model, arrays)
    expected = torch.from_numpy(arrays["logits"])
    max_abs_diff = float((logits - expected).abs().max())
    assert max_abs_diff <= 1e-4
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    # The converter's own figure is the one measured here, and the model card states it.
    assert report.verification.max_abs_diff == pytest.approx(max_abs_diff, rel=1e-6, abs=1e-9)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"{report.verification.max_abs_diff:.2e}" in card
    assert "Not the official width" in card  # the `_w16` fixtures are narrowed, the card must say so

    assert MODEL_FILES <= {path.name for path in (tmp_path / "out").iterdir()}
    classes = ADE20K_CLASSES if "ade20k" in preset else CITYSCAPES_CLASSES
    assert [model.config.id2label[i] for i in range(len(classes))] == list(classes)
    assert model.config.backbone_config.depth == (101 if "r101" in name else 50)
    assert (model.config.neck_channels, model.config.head_channels) == (32, 16)
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["do_reduce_labels"] is ("ade20k" in preset)


def test_cli_subprocess_verifies_and_folder_loads_without_the_package(tmp_path):
    name = "fpn_r50_c19_97x130_w16_b2"
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, str(CLI), "--checkpoint", str(FIXTURES / f"{name}.pth"), "--preset",
         FIXTURE_PRESETS[name], "--output-dir", str(out), "--verify", str(FIXTURES / f"{name}.npz")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reported = re.search(r"max abs diff ([0-9.e+-]+).*argmax agreement ([0-9.]+)%", result.stdout)
    assert reported, result.stdout
    assert float(reported.group(1)) <= 1e-4 and float(reported.group(2)) == 100.0

    code = textwrap.dedent(f"""
        import numpy as np, torch
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        arrays = np.load({str(FIXTURES / f"{name}.npz")!r})
        with torch.no_grad():
            logits = model(torch.from_numpy(arrays["pixel_values"])).logits
        diff = (logits - torch.from_numpy(arrays["logits"])).abs().max().item()
        assert diff <= 1e-4, diff
        assert model.config.id2label[18] == "bicycle"
        # The model card's usage snippet: PIL image -> processor -> model -> label map at the image size (without
        # the test-scale resize, which would blow this 97x130 image up to 1024x1372).
        from PIL import Image
        image = Image.fromarray(arrays["image_bgr_uint8"][0][..., ::-1].copy())
        inputs = processor(images=image, return_tensors="pt", do_resize=False)
        assert torch.allclose(inputs["pixel_values"], torch.from_numpy(arrays["pixel_values"][:1]), atol=1e-5)
        with torch.no_grad():
            outputs = model(**inputs)
        segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        assert tuple(segmentation.shape) == (97, 130), segmentation.shape
        print("remote diff", diff, type(processor).__name__)
    """)
    remote = run_without_fpn_seg(code, cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr
    # Same weights, same code: the figure the CLI printed is the one a user without the package gets.
    assert float(remote.stdout.split("remote diff ")[1].split()[0]) == pytest.approx(float(reported.group(1)), rel=1e-3, abs=1e-6)
    assert "SemanticFPNImageProcessor" in remote.stdout


def test_verify_an_existing_folder(tmp_path, capsys):
    name = "fpn_r50_c150_64x96_w16"
    convert_semantic_fpn(FIXTURES / f"{name}.pth", tmp_path / "out", preset=FIXTURE_PRESETS[name])
    assert main(["--converted", str(tmp_path / "out"), "--verify", str(FIXTURES / f"{name}.npz")]) == 0
    reported = re.search(r"max abs diff ([0-9.e+-]+).*argmax agreement 100\.0000%", capsys.readouterr().out)
    assert reported and float(reported.group(1)) <= 1e-4  # 0.0 on some CPUs: a tolerance, never a rounding figure
    # A reference the folder does not reproduce (another model's logits, same shape) fails the check.
    other = tmp_path / "other.npz"
    arrays, _ = load_reference(name)
    np.savez(other, pixel_values=arrays["pixel_values"], logits=arrays["logits"] + 0.5)
    assert main(["--converted", str(tmp_path / "out"), "--verify", str(other)]) == 1
    assert "exceeds --tolerance" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ official key layout


def mmseg_meta(preset: str) -> dict:
    """A `meta` dict as mmseg 0.x writes it (CLASSES with mmseg's trailing space in "bed ", PALETTE, config...)."""
    classes = tuple("bed " if name == "bed" else name for name in (ADE20K_CLASSES if "ade20k" in preset else
                                                                    CITYSCAPES_CLASSES))  # fmt: skip
    return {
        "mmseg_version": "0.5.0+b2724da",
        "config": f"model = dict(type='EncoderDecoder')  # {preset}",
        "CLASSES": classes,
        "PALETTE": [[index, 2 * index % 256, 3 * index % 256] for index in range(len(classes))],
        "env_info": "sys.platform: linux",
        "seed": None,
        "exp_name": f"{preset}.py",
        "mmcv_version": "1.0.0",
        "time": "Fri Jul 17 02:14:37 2020",
        "epoch": 1,
        "iter": 80000,
        "hook_msgs": {"best_score": np.float64(0.7452), "best_iter": np.int64(80000)},  # numpy scalars load safely
    }


def official_layout_checkpoint(layout_name: str, path: Path) -> dict[str, float]:
    """A checkpoint with exactly the official keys, shapes and dtypes; tensor `i` holds the value `i` everywhere
    (stored as one element expanded, so the file stays tiny). Returns {mmseg key: fill value}."""
    layout = json.loads((FIXTURES / "official_state_dict_layout.json").read_text())[layout_name]
    state_dict, fills = {}, {}
    for index, (key, (shape, dtype)) in enumerate(layout.items()):
        value = torch.full((1,) * len(shape), float(index), dtype=getattr(torch, dtype))
        state_dict[key] = value.expand(shape) if shape else value.reshape(())
        fills[key] = float(index)
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4, "params": [0]}]}
    preset = LAYOUT_PRESETS[layout_name]
    torch.save({"meta": mmseg_meta(preset), "state_dict": state_dict, "optimizer": optimizer}, path)
    return fills


@pytest.mark.parametrize("layout_name", sorted(LAYOUT_PRESETS))
def test_official_layout_converts_with_the_right_labels(layout_name, tmp_path):
    preset = LAYOUT_PRESETS[layout_name]
    fills = official_layout_checkpoint(layout_name, tmp_path / "official.pth")
    report = convert_semantic_fpn(tmp_path / "official.pth", tmp_path / "out", preset=preset)
    assert report.official_architecture and report.class_names_checked
    assert report.num_tensors == (696 if "r101" in layout_name else 390)

    out = tmp_path / "out"
    config = AutoConfig.from_pretrained(out)
    classes = ADE20K_CLASSES if "ade20k" in preset else CITYSCAPES_CLASSES
    assert config.num_labels == len(classes) == (150 if "ade20k" in preset else 19)
    assert [config.id2label[i] for i in range(config.num_labels)] == list(classes)
    assert config.backbone_config.depth == (101 if "r101" in layout_name else 50)
    with torch.device("meta"):
        expected = SemanticFPNForSemanticSegmentation(config).state_dict()
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert set(weights.keys()) == set(expected)
        for key in weights.keys():
            assert tuple(weights.get_slice(key).get_shape()) == tuple(expected[key].shape), key
        # Renamed keys carry the right tensors (each source tensor has its own fill value).
        pairs = {
            "decode_head.classifier.weight": "decode_head.conv_seg.weight",
            "decode_head.scale_heads.3.2.norm.running_var": "decode_head.scale_heads.3.4.bn.running_var",
            "neck.fpn_convs.2.bias": "neck.fpn_convs.2.conv.bias",
            "backbone.layer3.5.conv2.weight": "backbone.layer3.5.conv2.weight",
        }
        for ours, theirs in pairs.items():
            assert torch.all(weights.get_tensor(ours) == fills[theirs]), ours
    row = OFFICIAL_CHECKPOINTS[preset]
    card = (out / "README.md").read_text()
    assert f"{row.miou:.2f}" in card and f"{row.miou_ms_flip:.2f}" in card and "license: apache-2.0" in card
    assert "Kirillov" in card and "mmseg2020" in card and "Not the official width" not in card
    # The model zoo's file is only claimed for a file with its sha256 prefix; a random one gets the caveat.
    assert "This is the model zoo's file" not in card and f"not identified as the model zoo's `{row.filename}`" in card
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["do_reduce_labels"] is ("ade20k" in preset)


def test_model_zoo_names_urls_and_hash_prefixes():
    row = get_official_checkpoint("fpn_r50_4xb2-80k_cityscapes-512x1024")  # mmseg 1.x name of the same row
    assert row.preset == "fpn_r50_512x1024_80k_cityscapes" and row.sha256_prefix == "94018a0d"
    assert row.filename == "fpn_r50_512x1024_80k_cityscapes_20200717_021437-94018a0d.pth"
    assert [OFFICIAL_CHECKPOINTS[name].sha256_prefix for name in LAYOUT_PRESETS.values()] == [
        "94018a0d", "c5800d4c", "5b5a6ab9", "306b5004"
    ]  # fmt: skip
    assert get_imagenet_backbone("open-mmlab://resnet50_v1c").sha256_prefix == "2cccc1ad"
    assert get_imagenet_backbone("resnet101_v1c").depth == 101
    assert sha256_prefix_in_name("fpn_r50_c19_97x130_w16_b2.pth") is None
    assert sha256_prefix_in_name("resnet50_v1c-2cccc1ad.pth") == "2cccc1ad"
    with pytest.raises(ConversionError, match="not one of the sem_fpn model-zoo checkpoints"):
        get_official_checkpoint("fpn_r18_cityscapes")


# --------------------------------------------------------------------------------------------------- refusals


def edited_fixture(path: Path, edit) -> Path:
    checkpoint = torch.load(FIXTURES / "fpn_r50_c19_97x130_w16_b2.pth", map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return path


class MetaRecord:
    """A custom class inside a checkpoint: only `weights_only=False` could rebuild it."""

    def __init__(self, note: str):
        self.note = note


EDITS = {
    "unknown key": (
        lambda ckpt: ckpt["state_dict"].update({"decode_head.conv_extra.weight": torch.zeros(3)}),
        CheckpointMismatchError, r"unexpected keys \(1\): decode_head\.conv_extra\.weight",
    ),
    "missing key": (
        lambda ckpt: ckpt["state_dict"].pop("backbone.layer2.1.bn2.running_var"),
        CheckpointMismatchError, r"missing keys \(1\): backbone\.layer2\.1\.bn2\.running_var",
    ),
    "wrong shape": (
        lambda ckpt: ckpt["state_dict"].update({"neck.fpn_convs.1.conv.bias": torch.zeros(33)}),
        CheckpointMismatchError, r"wrong shape for neck\.fpn_convs\.1\.bias: checkpoint \(33,\), model \(32,\)",
    ),
    "argparse.Namespace": (
        lambda ckpt: ckpt["meta"].update(args=argparse.Namespace(lr=0.01)),
        UnsafeCheckpointError, r"weights_only=True.*argparse\.Namespace.*never",
    ),
    "custom class": (
        lambda ckpt: ckpt["meta"].update(record=MetaRecord("x")),
        UnsafeCheckpointError, r"weights_only=True.*MetaRecord.*never",
    ),
    "class names": (
        lambda ckpt: ckpt["meta"].update(CLASSES=tuple(reversed(ckpt["meta"]["CLASSES"]))),
        ConversionError, r"meta\['CLASSES'\].*0: 'bicycle' != 'road'",
    ),
    "class names (mmseg 1.x)": (
        lambda ckpt: ckpt.update(meta={"dataset_meta": {"classes": tuple(reversed(ckpt["meta"]["CLASSES"]))}}),
        ConversionError, r"meta\['dataset_meta'\]\['classes'\].*0: 'bicycle' != 'road'",
    ),
    "module. duplicate": (
        lambda ckpt: ckpt["state_dict"].update({"module.neck.fpn_convs.1.conv.bias": torch.zeros(32)}),
        ConversionError, r"'neck\.fpn_convs\.1\.conv\.bias' both with and without the 'module\.' prefix",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(EDITS))
def test_refusals_name_the_problem_and_write_nothing(case, tmp_path, capsys):
    edit, error_type, message = EDITS[case]
    checkpoint = edited_fixture(tmp_path / "edited.pth", edit)
    with pytest.raises(error_type, match=re.compile(message, re.S)):
        convert_semantic_fpn(checkpoint, tmp_path / "out", preset=FIXTURE_PRESETS["fpn_r50_c19_97x130_w16_b2"])
    assert_nothing_written(tmp_path)
    # The command line says the same and exits with 1.
    argv = ["--checkpoint", str(checkpoint), "--preset", FIXTURE_PRESETS["fpn_r50_c19_97x130_w16_b2"]]
    assert main([*argv, "--output-dir", str(tmp_path / "out" / "nested")]) == 1
    assert re.search(message, capsys.readouterr().err, re.S)
    assert_nothing_written(tmp_path)  # not even the parent folders the run would have created


def test_wrong_sha256_prefix_is_refused(tmp_path, capsys):
    renamed = tmp_path / "fpn_r50_512x1024_80k_cityscapes_20200717_021437-94018a0d.pth"
    renamed.write_bytes((FIXTURES / "fpn_r50_c19_97x130_w16_b2.pth").read_bytes())
    with pytest.raises(ChecksumError, match=r"does not start with '94018a0d'"):
        convert_semantic_fpn(renamed, tmp_path / "out", preset="fpn_r50_512x1024_80k_cityscapes")
    assert_nothing_written(tmp_path)
    # `--model` requires the model zoo's prefix whatever the local file is called.
    fixture = FIXTURES / "fpn_r101_c19_97x130_w16_b2.pth"
    argv = ["--model", "fpn_r101_512x1024_80k_cityscapes", "--checkpoint", str(fixture), "--output-dir"]
    assert main([*argv, str(tmp_path / "out")]) == 1
    assert "does not start with 'c5800d4c'" in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_url_download_into_the_torch_hub_cache(tmp_path, monkeypatch, capsys):
    # A `file://` URL takes the same path as an https one (torch.hub's downloader, hash prefix of the file name).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    fixture = FIXTURES / "fpn_r50_c150_64x96_w16.pth"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = mirror / f"fpn_r50_c150_w16-{file_sha256(fixture)[:8]}.pth"
    bad = mirror / "fpn_r50_c150_w16-0123abcd.pth"
    for copy in (good, bad):
        copy.write_bytes(fixture.read_bytes())
    argv = ["--preset", "fpn_r50_512x512_160k_ade20k", "--output-dir", str(tmp_path / "out"), "--checkpoint"]
    assert main([*argv, bad.as_uri()]) == 1
    assert "sha256 does not start with '0123abcd'" in capsys.readouterr().err
    assert_nothing_written(tmp_path)
    assert list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir()) == []  # no partial download kept
    assert main([*argv, good.as_uri()]) == 0
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / good.name).is_file()
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_existing_output_folder_needs_overwrite(tmp_path, capsys):
    name = "fpn_r50_c150_64x96_w16"
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    argv = ["--checkpoint", str(FIXTURES / f"{name}.pth"), "--preset", FIXTURE_PRESETS[name], "--output-dir", str(out)]
    assert main(argv) == 2  # a usage error: nothing was read
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["notes.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]

    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and MODEL_FILES <= {path.name for path in out.iterdir()}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging or retired folder left


def test_failed_verification_writes_nothing(tmp_path):
    # R-50 weights checked against the R-101 reference (same shapes, different logits).
    with pytest.raises(ConversionError, match="exceeds the tolerance"):
        convert_semantic_fpn(
            FIXTURES / "fpn_r50_c19_97x130_w16_b2.pth", tmp_path / "out",
            preset="fpn_r50_512x1024_80k_cityscapes", verify=FIXTURES / "fpn_r101_c19_97x130_w16_b2.npz",
        )  # fmt: skip
    assert_nothing_written(tmp_path)


def test_wrong_depth_or_class_count_for_the_preset(tmp_path):
    with pytest.raises(ConversionError, match="ResNet-101, but ResNet-50 was asked for"):
        convert_semantic_fpn(
            FIXTURES / "fpn_r101_c19_97x130_w16_b2.pth", tmp_path / "out", preset="fpn_r50_512x1024_80k_cityscapes"
        )
    without_meta = edited_fixture(tmp_path / "no_meta.pth", lambda ckpt: ckpt.pop("meta"))
    with pytest.raises(ConversionError, match="has 19 classes, but preset 'fpn_r50_512x512_160k_ade20k'"):
        convert_semantic_fpn(without_meta, tmp_path / "out", preset="fpn_r50_512x512_160k_ade20k")
    assert_nothing_written(tmp_path)


# ------------------------------------------------------------------------------------------------- backbone mode


def imagenet_file(path: Path, config: ResNetV1cConfig) -> dict[str, torch.Tensor]:
    """An ImageNet-style ResNetV1c file: bare `stem.*` / `layer*` keys plus the classifier `fc.*`."""
    state_dict = ResNetV1cBackbone(config).state_dict()
    for key, value in state_dict.items():
        if value.is_floating_point():
            value.normal_()  # every tensor distinct, BatchNorm statistics included
    fc = {"fc.weight": torch.randn(1000, config.hidden_sizes[-1]), "fc.bias": torch.randn(1000)}
    torch.save({**state_dict, **fc}, path)
    return state_dict


def test_backbone_mode_and_training_start(tmp_path, capsys):
    config = ResNetV1cConfig(depth=50, stem_channels=16, base_channels=16)
    source = imagenet_file(tmp_path / "imagenet.pth", config)
    out = tmp_path / "resnet50_v1c"
    argv = ["--checkpoint", str(tmp_path / "imagenet.pth"), "--backbone-depth", "50", "--output-dir", str(out)]
    assert main(argv) == 0

    # (transformers 5.x's `AutoBackbone.from_pretrained` rejects local folders; the class itself and the Auto
    # registration via `from_config` are what a local user has.)
    backbone = ResNetV1cBackbone.from_pretrained(out)
    assert backbone.config.base_channels == 16
    assert isinstance(AutoBackbone.from_config(AutoConfig.from_pretrained(out)), ResNetV1cBackbone)
    assert all(torch.equal(backbone.state_dict()[key], value) for key, value in source.items())

    model = semantic_fpn_from_pretrained_backbone(
        out, preset="fpn_r50_512x1024_80k_cityscapes", backbone_overrides={"frozen_stages": 1},
        neck_channels=32, head_channels=16,
    )  # fmt: skip
    assert model.config.num_labels == 19 and model.config.id2label[0] == "road"
    assert not any(parameter.requires_grad for parameter in model.backbone.layer1.parameters())
    assert all(torch.equal(model.backbone.state_dict()[key], value) for key, value in source.items())
    loss = model(torch.randn(1, 3, 32, 48), labels=torch.randint(0, 19, (1, 32, 48))).loss
    assert torch.isfinite(loss)
    card = (out / "README.md").read_text()
    assert "semantic_fpn_from_pretrained_backbone" in card

    # A model with another backbone width is refused with the key list, not a torch traceback.
    narrower = SemanticFPNForSemanticSegmentation(preset_config(
        "fpn_r50_512x1024_80k_cityscapes", backbone_config=ResNetV1cConfig(depth=50, stem_channels=8, base_channels=8)
    ))  # fmt: skip
    message = r"wrong shape for layer1.0.conv1.weight: checkpoint \(16, 16, 1, 1\), model \(8, 8, 1, 1\)"
    with pytest.raises(CheckpointMismatchError, match=message):
        load_pretrained_backbone(narrower, out)

    # A folder whose weights lack a tensor (or hold an extra one) is refused too: `from_pretrained` alone would
    # initialise the missing tensor at random and only warn.
    weights = load_file(out / "model.safetensors")
    weights["extra.weight"] = weights.pop("layer1.0.bn1.running_var")
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    message = r"missing keys \(1\): layer1.0.bn1.running_var.*unexpected keys \(1\): extra.weight"
    with pytest.raises(CheckpointMismatchError, match=re.compile(message, re.S)):
        semantic_fpn_from_pretrained_backbone(out, preset="fpn_r50_512x1024_80k_cityscapes")


def test_backbone_mode_refusals(tmp_path, capsys):
    imagenet_file(tmp_path / "imagenet.pth", ResNetV1cConfig(depth=50, stem_channels=16, base_channels=16))
    argv = ["--checkpoint", str(tmp_path / "imagenet.pth"), "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--backbone-depth", "101"]) == 1
    assert "ResNet-50, but ResNet-101 was asked for" in capsys.readouterr().err
    assert main([*argv, "--backbone", "resnet50_v1c"]) == 1  # a local copy must be mmcv's file (sha256 2cccc1ad...)
    assert "does not start with '2cccc1ad'" in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_backbone_mode_on_the_official_layout(tmp_path):
    layout = json.loads((FIXTURES / "official_state_dict_layout.json").read_text())["fpn_r101_cityscapes"]
    state_dict = {
        key.removeprefix("backbone."): torch.zeros(shape, dtype=getattr(torch, dtype))
        for key, (shape, dtype) in layout.items()
        if key.startswith("backbone.")
    }
    state_dict.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save({"state_dict": state_dict}, tmp_path / "resnet101_v1c.pth")
    assert main(["--checkpoint", str(tmp_path / "resnet101_v1c.pth"), "--backbone-depth", "101", "--output-dir",
                 str(tmp_path / "out")]) == 0  # fmt: skip
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert (config.depth, config.stem_channels, config.base_channels) == (101, 64, 64)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as weights:
        assert set(weights.keys()) == set(state_dict) - {"fc.weight", "fc.bias"}


def test_the_old_convert_module_re_exports_its_names():
    import fpn_seg.convert as moved

    names = {"ConversionError", "OutputExistsError", "build_semantic_fpn", "check_class_names", "convert_semantic_fpn",
             "infer_backbone_config", "infer_resnet_depth", "infer_semantic_fpn_config", "load_checkpoint",
             "load_pretrained_backbone", "main", "semantic_fpn_from_pretrained_backbone", "verify_converted"}  # fmt: skip
    assert names <= set(moved.__all__) and all(hasattr(moved, name) for name in moved.__all__)
