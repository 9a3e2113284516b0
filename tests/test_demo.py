"""`make demo` end to end on a tiny setting: dataset, Trainer run, reload, pipeline overlays, reuse on a second run."""

import json

import torch

from fpn_seg.demo import main as demo_main
from fpn_seg.demo import pixel_agreement


def test_demo_runs_and_reuses_its_outputs(tmp_path, capsys):
    arguments = ["--output-dir", str(tmp_path), "--num-train", "8", "--num-val", "3", "--image-size", "32", "64"]
    assert demo_main([*arguments, "--max-steps", "2"]) == 0
    first = capsys.readouterr().out
    assert "Fine-tuning" in first and "held-out mIoU" in first
    model_dir = tmp_path / "model"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "training_curves.png"):
        assert (model_dir / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == [f"held_out_0{i}.png" for i in range(3)]
    assert (tmp_path / "street.png").is_file()
    held_out = json.loads((model_dir / "held_out_results.json").read_text())
    assert held_out["num_images"] == 3 and 0.0 <= held_out["mean_iou"] <= 1.0
    assert 0.0 <= held_out["bf16_mean_iou"] <= 1.0 and 0.0 <= held_out["bf16_pixel_agreement"] <= 1.0
    assert f"{100 * held_out['bf16_pixel_agreement']:.2f}% of the pixels get the float32 label" in first
    from fpn_seg.deployment import detect_cpu_capabilities

    for name, key in (("ONNX Runtime int8", "int8"), ("OpenVINO fp32", "openvino_fp32"), ("OpenVINO int8", "openvino_int8"),
                      ("OpenVINO bf16", "openvino_bf16")):  # fmt: skip
        if key == "openvino_bf16" and not detect_cpu_capabilities().openvino_bf16:
            assert "OpenVINO bf16: skipped: no bf16 on this CPU" in first and key + "_mean_iou" not in held_out
            continue
        agreement, miou = held_out[f"{key}_pixel_agreement"], held_out[f"{key}_mean_iou"]
        assert 0.0 <= agreement <= 1.0 and 0.0 <= miou <= 1.0, key
        assert (f"{name}: {100 * agreement:.2f}% of the pixels get the float32 label; mIoU {100 * miou:.2f} "
                f"(float32: {100 * held_out['mean_iou']:.2f})") in first, name  # fmt: skip
    assert held_out["openvino_fp32_pixel_agreement"] >= 0.999  # exact: the same labels up to float rounding ties
    weights = (model_dir / "model.safetensors").read_bytes()

    assert demo_main(arguments) == 0
    second = capsys.readouterr().out
    assert "Reusing the trained model" in second and "Fine-tuning" not in second
    assert (model_dir / "model.safetensors").read_bytes() == weights


def test_pixel_agreement_counts_pixels_over_all_images():
    reference = [torch.zeros(2, 2, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)]
    labels = [torch.tensor([[0, 1], [0, 0]]), torch.tensor([[0, 0, 0, 2]])]
    assert pixel_agreement(labels, reference) == 6 / 8
