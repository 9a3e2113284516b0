"""The `make demo` job: synthetic street scenes -> Trainer fine-tuning -> saved model -> AutoModel and pipeline ->
ONNX export with int8 -> accuracy of ONNX Runtime and OpenVINO -> overlays of held-out images, on a CPU in a few minutes.

    python -m fpn_seg.demo [--output-dir demo_output] [--retrain]

A second run reuses the dataset and the trained model that exist (pass `--retrain` to train again).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from .data import generate_street_scenes, load_cityscapes
from .deployment.onnx_folder import is_onnx_folder
from .image_reading import label_to_tensor
from .inference import segment
from .metrics import MeanIoU, format_iou_table
from .train import run_training
from .visualize import overlay

NUM_OVERLAYS = 6
NUM_CALIBRATION_IMAGES = 32


def train_demo_model(data_dir: Path, model_dir: Path, extra_arguments: list[str]) -> None:
    arguments = ["--recipe", "demo", "--data_dir", str(data_dir), "--output_dir", str(model_dir)]
    run_training([*arguments, "--overwrite_output_dir", "true", *extra_arguments])  # the demo owns its folder


def evaluate_held_out(model, processor, dataset, bf16: bool = False) -> tuple[dict, list[torch.Tensor]]:
    """mIoU of `model` on every held-out image with the inference API (whole-image mode), and the label maps."""
    metric = MeanIoU(model.config.num_labels, ignore_index=model.config.ignore_index)
    predictions = segment(model, processor, [example["image"] for example in dataset], bf16=bf16)
    for prediction, example in zip(predictions, dataset):
        metric.update(prediction, processor.encode_labels(label_to_tensor(example["label"])))
    return metric.compute(), predictions


def pixel_agreement(label_maps: list[torch.Tensor], reference_maps: list[torch.Tensor]) -> float:
    """Fraction of all pixels whose label in `label_maps` equals the one in `reference_maps`."""
    equal = sum(int((a == b).sum()) for a, b in zip(label_maps, reference_maps))
    return equal / sum(reference.numel() for reference in reference_maps)


# The exported runtimes and precisions whose accuracy the demo prints (float32 torch is the reference).
EXPORTED_PATHS = (("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))


def exported_results(model_dir, onnx_dir, data_dir, processor, held_out, predictions, results, args) -> dict:
    """Export the demo model to ONNX with its int8 copy (reused when it exists and the model was not retrained), run
    every path of `EXPORTED_PATHS` on the held-out images, print its agreement with float32 and both mIoUs (or why it
    was skipped: a missing extra, no bf16 on this CPU); {} without `[onnx]`."""
    try:
        from .deployment import QUANTIZED_FILE_NAME, PrecisionUnavailableError, export_onnx, require
        from .deployment.runtime_choice import RUNTIME_NAMES
        from .deployment.runtimes import runtime_class

        require("onnx", "onnxruntime", "onnxscript")
    except ImportError as error:
        print(f"  skipped: {error}")
        return {}
    if args.retrain or not (onnx_dir / QUANTIZED_FILE_NAME).is_file() or _older(onnx_dir, model_dir):
        calibration = sorted((data_dir / "leftImg8bit" / "train").rglob("*.png"))[:NUM_CALIBRATION_IMAGES]
        report = export_onnx(model_dir, onnx_dir, int8=True, calibration_images=calibration, overwrite=True)
        print(report.summary())
    else:
        print(f"  reusing {onnx_dir}")
    summary = {}
    for runtime, precision in EXPORTED_PATHS:
        name = f"{RUNTIME_NAMES[runtime]} {precision}"
        try:
            exported = runtime_class(runtime).from_pretrained(onnx_dir, precision=precision)
        except PrecisionUnavailableError:
            print(f"{name}: skipped: no bf16 on this CPU")
            continue
        except ImportError as error:
            print(f"{name}: skipped: {error}")
            continue
        exported_iou, exported_predictions = evaluate_held_out(exported, processor, held_out)
        agreement = pixel_agreement(exported_predictions, predictions)
        print(
            f"{name}: {100 * agreement:.2f}% of the pixels get the float32 label; "
            f"mIoU {100 * exported_iou['mean_iou']:.2f} (float32: {100 * results['mean_iou']:.2f})"
        )
        key = "int8" if runtime == "onnxruntime" else f"{runtime}_{precision}"  # int8_*: ONNX Runtime's, as before
        summary.update({f"{key}_mean_iou": float(exported_iou["mean_iou"]), f"{key}_pixel_agreement": agreement})
    return summary


def _older(folder: Path, than: Path) -> bool:
    """Whether `folder`'s config is older than the model's weights in `than` (the model was trained since)."""
    return (folder / CONFIG_NAME).stat().st_mtime < (than / SAFE_WEIGHTS_NAME).stat().st_mtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpn_seg.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="demo_output", type=Path)
    parser.add_argument("--retrain", action="store_true", help="train again even if a model exists")
    parser.add_argument("--num-train", type=int, default=300, help="synthetic training scenes")
    parser.add_argument("--num-val", type=int, default=40, help="synthetic held-out scenes")
    parser.add_argument("--image-size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's training steps")
    args = parser.parse_args(argv)
    height, width = args.image_size
    # The recipe's crop and test scale are for 128x256 scenes; other sizes get their own.
    extra = ["--crop_size", str(height), str(width), "--scale", str(max(height, width)), str(min(height, width))]
    if args.max_steps is not None:
        extra += ["--max_steps", str(args.max_steps), "--eval_steps", str(max(1, args.max_steps))]
    started = time.perf_counter()
    data_dir, model_dir, overlay_dir = args.output_dir / "data", args.output_dir / "model", args.output_dir / "overlays"

    print(f"[1/6] Synthetic street scenes in {data_dir}")
    generate_street_scenes(data_dir, num_train=args.num_train, num_val=args.num_val, size=(height, width), seed=0)

    if args.retrain or not (model_dir / SAFE_WEIGHTS_NAME).exists():
        print(f"[2/6] Fine-tuning a ResNetV1c-18 Semantic FPN with the Trainer (recipe 'demo') into {model_dir}")
        train_demo_model(data_dir, model_dir, extra)
    else:
        print(f"[2/6] Reusing the trained model in {model_dir} (--retrain to train again)")

    print("[3/6] Reloading with AutoModelForSemanticSegmentation and AutoImageProcessor")
    model = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    held_out = load_cityscapes(data_dir, splits=("val",), progress=False)["validation"]
    # `segment` prepares the exact optimised copy on its first call and reuses it for the bf16 run.
    results, predictions = evaluate_held_out(model, processor, held_out)
    print(f"Held-out images ({len(held_out)}), whole-image inference:")
    print(format_iou_table(results, model.config.id2label))
    bf16_results, bf16_predictions = evaluate_held_out(model, processor, held_out, bf16=True)
    agreement = pixel_agreement(bf16_predictions, predictions)
    print(
        f"bfloat16 autocast: {100 * agreement:.2f}% of the pixels get the float32 label; "
        f"mIoU {100 * bf16_results['mean_iou']:.2f} (float32: {100 * results['mean_iou']:.2f})"
    )
    summary = {
        "num_images": len(held_out),
        "mean_iou": float(results["mean_iou"]),
        "bf16_mean_iou": float(bf16_results["mean_iou"]),
        "bf16_pixel_agreement": agreement,
    }
    onnx_dir = args.output_dir / "onnx"
    print(f"[4/6] ONNX export and static int8 (calibrated on {NUM_CALIBRATION_IMAGES} training scenes) into {onnx_dir}; "
          "ONNX Runtime and OpenVINO")
    summary.update(exported_results(model_dir, onnx_dir, data_dir, processor, held_out, predictions, results, args))
    (model_dir / "held_out_results.json").write_text(json.dumps(summary, indent=2))

    print(f"[5/6] pipeline('image-segmentation') on {NUM_OVERLAYS} held-out images -> {overlay_dir}")
    segmenter = pipeline("image-segmentation", model=str(model_dir))
    overlay_dir.mkdir(parents=True, exist_ok=True)
    held_out[0]["image"].save(args.output_dir / "street.png")  # the image the README's snippets use
    for index in range(min(NUM_OVERLAYS, len(held_out))):
        image = held_out[index]["image"].convert("RGB")
        segments = segmenter(image)
        label_map = torch.full((image.height, image.width), model.config.ignore_index, dtype=torch.long)
        for segment_info in segments:
            label_map[label_to_tensor(segment_info["mask"]) > 0] = model.config.label2id[
                segment_info["label"]
            ]
        overlay(image, label_map, model.config.id2label).save(overlay_dir / f"held_out_{index:02d}.png")

    print("[6/6] Done in {:.0f} s. Outputs:".format(time.perf_counter() - started))
    print(f"  dataset          {data_dir}")
    print(f"  model folder     {model_dir}  (AutoModelForSemanticSegmentation / pipeline load it)")
    print(f"  training curve   {model_dir / 'training_curves.png'}")
    print(f"  overlays         {overlay_dir}/held_out_*.png")
    if is_onnx_folder(onnx_dir):
        print(f"  ONNX folder      {onnx_dir}  (fpn-seg predict {onnx_dir} IMAGES --runtime auto)")
    print(f"  a held-out scene {args.output_dir / 'street.png'}  (the README's snippets use it)")
    print(f"  web page         fpn-seg app {model_dir}  (http://127.0.0.1:7860)")
    print(f"  held-out mIoU    {100 * results['mean_iou']:.2f}")
    return 0


__all__ = ["evaluate_held_out", "main", "exported_results", "pixel_agreement", "train_demo_model"]

if __name__ == "__main__":
    raise SystemExit(main())
