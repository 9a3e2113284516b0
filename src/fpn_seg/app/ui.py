"""The Gradio page over a [`SegmentationService`]: one photo (or several) in; overlay with a legend, the class shares,
the time taken and the label map as a PNG of class ids out. Needs the `[app]` extra (gradio).

API (gradio_client), `api_name="/segment"`: inputs `(image file, mode="whole", precision)` (default: the service's
precision: fp32, or what `--runtime auto` chose); outputs
`(label map PNG of class ids, overlay image, class table, summary text)`. `/segment_many` takes a list of files
and returns `(label map PNGs, overlays, table of the classes of each image, summary text)`.
"""

import os
from collections.abc import Sequence
from pathlib import Path

from ..deployment.dependencies import require
from ..image_files import raise_pillow_pixel_limit
from .service import DEFAULT_MAX_PIXELS, MODES, OUTPUT_MAX_AGE_S, AppError, SegmentationService

CLASS_TABLE_HEADERS = ["class", "share of pixels (%)", "pixels"]


def _gradio():
    (gradio,) = require("gradio", purpose="fpn-seg app", extra="app")
    return gradio


def _summary(results, precision: str, mode: str) -> str:
    seconds = sum(result.seconds for result in results)
    images = f"{len(results)} image(s)" if len(results) > 1 else f"{results[0].label_map.shape[1]}x{results[0].label_map.shape[0]}"
    return f"Segmented {images} in {seconds:.2f} s ({mode}, {precision})."


def build_app(
    service: SegmentationService, examples: Sequence[str | os.PathLike] = (), concurrency: int = 1
):
    """The `gradio.Blocks` page of `service`; requests queue with at most `concurrency` running at once."""
    gr = _gradio()

    def segment_one(path, mode="whole", precision=None):
        precision = precision or service.default_precision
        if not path:
            raise gr.Error("Upload an image first.")
        try:
            result = service.segment_file(path, mode, precision)
        except AppError as error:
            raise gr.Error(str(error), print_exception=False) from None
        return str(result.label_png), str(result.overlay_png), [list(row) for row in result.classes], _summary([result], precision, mode)

    def segment_many(paths, mode="whole", precision=None):
        precision = precision or service.default_precision
        if not paths:
            raise gr.Error("Upload one or more images first.")
        results = []
        for path in paths:
            try:
                results.append((Path(path).name, service.segment_file(path, mode, precision)))
            except AppError as error:
                raise gr.Error(str(error), print_exception=False) from None
        table = [[name, ", ".join(f"{label} {share}%" for label, share, _ in result.classes[:5])] for name, result in results]
        label_pngs = [str(result.label_png) for _, result in results]
        overlays = [(str(result.overlay_png), name) for name, result in results]
        return label_pngs, overlays, table, _summary([result for _, result in results], precision, mode)

    precisions = list(service.precisions) or ["fp32"]
    with gr.Blocks(title=service.title, delete_cache=(OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)) as app:
        gr.Markdown(f"# {service.title}\n{service.describe()}")
        if service.load_error:
            gr.Markdown(f"**Error:** {service.load_error}", elem_id="load-error")
        with gr.Row():
            mode = gr.Radio(list(MODES), value="whole", label="Test mode (mmseg's: whole image, sliding window, multi-scale + flip)")
            precision = gr.Radio(precisions, value=service.default_precision, label="Precision")
        with gr.Tab("Photo"):
            with gr.Row():
                with gr.Column():
                    photo = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="photo")
                    run = gr.Button("Segment", variant="primary", elem_id="segment")
                    if examples:
                        gr.Examples([[str(path)] for path in examples], inputs=[photo], label="Examples")
                with gr.Column():
                    picture = gr.Image(label="Overlay", type="filepath", elem_id="overlay", interactive=False)
                    summary = gr.Markdown(elem_id="summary")
            with gr.Row():
                label_png = gr.File(label="Label map (PNG of class ids)", elem_id="label-map")
                table = gr.Dataframe(headers=CLASS_TABLE_HEADERS, datatype=["str", "number", "number"], label="Classes",
                                     elem_id="classes")  # fmt: skip
            run.click(segment_one, [photo, mode, precision], [label_png, picture, table, summary], api_name="segment",
                      concurrency_limit=concurrency)  # fmt: skip
        with gr.Tab("Several photos"):
            photos = gr.File(label="Photos", file_types=["image"], file_count="multiple", type="filepath")
            run_many = gr.Button("Segment all", variant="primary")
            gallery = gr.Gallery(label="Overlays")
            label_pngs = gr.File(label="Label maps (PNGs of class ids)", file_count="multiple")
            many_table = gr.Dataframe(headers=["image", "largest classes"], label="Classes")
            many_summary = gr.Markdown()
            run_many.click(segment_many, [photos, mode, precision], [label_pngs, gallery, many_table, many_summary],
                           api_name="segment_many", concurrency_limit=concurrency)  # fmt: skip
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    return app


def launch_app(
    source: str,
    host: str | None = None,
    port: int | None = None,
    examples: Sequence[str | os.PathLike] = (),
    concurrency: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    crop_size: tuple[int, int] | None = None,
    block: bool = True,
    **service_options,
):
    """Load `source` once and serve its page: on `host` (default `GRADIO_SERVER_NAME`, else 127.0.0.1) and `port`
    (default `GRADIO_SERVER_PORT`, else 7860). Returns the `gradio.Blocks` (with `block=False`, while it serves)."""
    gr = _gradio()
    raise_pillow_pixel_limit(max_pixels)  # for the server's lifetime
    service = SegmentationService(source, max_pixels=max_pixels, crop_size=crop_size, **service_options)
    if service.load_error:
        print(f"fpn-seg app: {service.load_error}")
    app = build_app(service, examples, concurrency)
    host = host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = port or int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, theme=theme, show_error=True,
               max_file_size="64mb", footer_links=["api"], ssr_mode=False, quiet=False)  # fmt: skip
    return app


__all__ = ["build_app", "launch_app"]
