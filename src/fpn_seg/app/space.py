"""`fpn-seg app MODEL --write-space DIR`: a folder ready to push as a Hugging Face Space (Gradio SDK).

The folder holds `app.py` (which serves the model with `fpn_seg.app.launch_app`), `requirements.txt` (the versions
installed here), `README.md` with the Space front matter, a copy of the `fpn_seg` package (it is not on PyPI), the
model (a copy of a local folder as `model/`, or its hub id in `app.py`) and the example images (`examples/`).
"""

import shutil
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from ..atomic import atomic_output_dir

APP_FILE = '''"""Semantic FPN demo: the Gradio app of fpn_seg over {what} (written by `fpn-seg app --write-space`)."""

from pathlib import Path

import fpn_seg
from fpn_seg.app import launch_app

HERE = Path(__file__).parent
print(f"fpn_seg {{fpn_seg.__version__}} from {{Path(fpn_seg.__file__).parent}}")
# Spaces set GRADIO_SERVER_NAME=0.0.0.0 and GRADIO_SERVER_PORT; elsewhere the app listens on 127.0.0.1:7860.
launch_app({source}, examples=sorted((HERE / "examples").glob("*")), concurrency={concurrency}{runtime})
'''

README = """---
title: {title}
emoji: 🛣️
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {gradio}
app_file: app.py
pinned: false
license: apache-2.0
---

# {title}

Semantic FPN (Kirillov et al., *Panoptic Feature Pyramid Networks*, CVPR 2019; mmsegmentation's `sem_fpn`) with
{classes} classes, served by fpn_seg's Gradio app: drop a photo, pick mmseg's test mode
(whole image, sliding window, multi-scale + flip) and the precision, and get the overlay, the share of each class
and the label map as a PNG of class ids.

API: `gradio_client.Client(url).predict(handle_file("photo.jpg"), api_name="/segment")` returns, first, the label
map PNG (class ids at the photo's size).
"""

# Distributions the Space installs, beside those of the ONNX runtime for an ONNX folder.
REQUIREMENTS = ("torch", "transformers", "huggingface_hub", "safetensors", "numpy", "pillow", "gradio")


def _requirements(onnx: bool, runtime: str | None = None) -> str:
    names = list(REQUIREMENTS) + (["onnx", "onnxruntime"] if onnx else [])
    names += ["openvino"] if onnx and runtime in ("openvino", "auto") else []
    lines = []
    for name in names:
        version = metadata.version(name).split("+")[0]  # 2.13.0+cpu -> 2.13.0 (the hub serves plain versions)
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def write_space(
    source: str,
    output_dir: str | Path,
    examples: Sequence[str | Path] = (),
    title: str | None = None,
    concurrency: int = 1,
    overwrite: bool = False,
    runtime: str | None = None,
    precision: str | None = None,
) -> Path:
    """Write the Space folder for `source` (a model folder, an ONNX folder or a hub id) into `output_dir`; the Space
    serves it with `runtime` and `precision` (see `SegmentationService`; auto probes again on the Space's CPU)."""
    import fpn_seg

    from .service import SegmentationService

    service = SegmentationService(source, runtime=runtime, precision=precision)  # refuse now what could not serve
    if service.load_error:
        raise ValueError(service.load_error)
    local = Path(source).is_dir()
    title = title or service.title
    with atomic_output_dir(output_dir, overwrite) as staging:
        if local:
            shutil.copytree(source, staging / "model", ignore=shutil.ignore_patterns(".*", "checkpoint-*", "runs"))
        package = Path(fpn_seg.__file__).parent
        shutil.copytree(package, staging / "fpn_seg", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (staging / "examples").mkdir()
        for path in examples:
            shutil.copy2(path, staging / "examples" / Path(path).name)
        what = "the model in model/" if local else f"the hub model {source}"
        model_source = 'str(HERE / "model")' if local else repr(source)
        options = "".join(f", {name}={value!r}" for name, value in (("runtime", runtime), ("precision", precision))
                          if value is not None)  # fmt: skip
        (staging / "app.py").write_text(APP_FILE.format(what=what, source=model_source, concurrency=concurrency,
                                                        runtime=options))  # fmt: skip
        (staging / "requirements.txt").write_text(_requirements(onnx=service.kind == "onnx", runtime=runtime))
        (staging / "README.md").write_text(
            README.format(title=title, gradio=metadata.version("gradio"), classes=service.config.num_labels)
        )
    return Path(output_dir)


__all__ = ["write_space"]
