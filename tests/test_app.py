"""`fpn-seg app` with real parts: the server in its own process, Debian's chromium driven by Playwright, gradio_client
calls (16 at once under a concurrency limit of 2; 100 in a row for the memory), a written Space folder served from
a fresh process, and the messages a page gives for bad uploads and a model that does not load."""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_batch_norms, tiny_config
from PIL import Image

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor, segment
from fpn_seg.app import SegmentationService, write_space
from fpn_seg.data import generate_street_scenes

gradio_client = pytest.importorskip("gradio_client", reason="the [app] extra (make test installs it)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "app.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A process serving `command` on a free port of 127.0.0.1; stopped on exit."""

    def __init__(self, command: list[str], cwd: Path, env: dict | None = None, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        environment = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False",
                       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}  # fmt: skip
        self.log = cwd / f"server_{self.port}.log"
        self.process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server stopped:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the server did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def rss(self) -> int:
        """The server's resident memory in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def model_dir(workdir) -> Path:
    model = randomise_batch_norms(SemanticFPNForSemanticSegmentation(tiny_config(num_labels=5))).eval()
    model.save_pretrained(workdir / "model")
    SemanticFPNImageProcessor.from_model_config(model.config, scale=(96, 64)).save_pretrained(workdir / "model")
    return workdir / "model"


@pytest.fixture(scope="module")
def images(workdir) -> list[Path]:
    """Four synthetic street scenes of different sizes, as PNG files."""
    paths = []
    for index, (height, width) in enumerate([(60, 90), (48, 64), (70, 50), (64, 64)]):
        data = generate_street_scenes(workdir / f"scenes_{index}", num_train=0, num_val=1, size=(height, width), seed=index)
        (scene_file,) = (data / "leftImg8bit" / "val").rglob("*.png")
        paths.append(Path(shutil.copy(scene_file, workdir / f"photo_{index}.png")))
    return paths


@pytest.fixture(scope="module")
def expected(model_dir, images) -> dict[str, torch.Tensor]:
    """`fpn_seg.segment`'s label map of each image, with the default settings, from the saved folder."""
    model = SemanticFPNForSemanticSegmentation.from_pretrained(model_dir)
    processor = SemanticFPNImageProcessor.from_pretrained(model_dir)
    return {path.name: segment(model, processor, path)[0] for path in images}


@pytest.fixture(scope="module")
def server(workdir, model_dir, images):
    command = [sys.executable, "-m", "fpn_seg.app.command", str(model_dir), "--concurrency", "2", "--examples", str(images[0])]
    running = Server(command, workdir)
    yield running
    running.stop()


def label_map_of(path: str | Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path)).astype(np.int64))


# ------------------------------------------------------------------------------------------------ the API


def test_the_api_returns_segments_label_map_first(server, images, expected):
    client = gradio_client.Client(server.url, verbose=False)
    label_png, overlay, table, summary = client.predict(gradio_client.handle_file(str(images[0])), api_name="/segment")
    assert torch.equal(label_map_of(label_png), expected[images[0].name])
    assert Path(label_png).name == "photo_0_label.png" and Image.open(overlay).width > 90  # the legend beside it
    shares = {row[0]: float(row[1]) for row in table["data"]}  # the table travels as text
    counts = np.bincount(expected[images[0].name].flatten().numpy(), minlength=5)
    assert shares == {f"class_{i}": round(100 * counts[i] / counts.sum(), 2) for i in range(5) if counts[i]}
    assert "Segmented 90x60 in" in summary and "(whole, fp32)" in summary
    for mode in ("slide", "ms+flip"):
        label_png, *_ = client.predict(gradio_client.handle_file(str(images[1])), mode, "fp32", api_name="/segment")
        assert label_map_of(label_png).shape == (48, 64)
    pngs, gallery, rows, _ = client.predict([gradio_client.handle_file(str(path)) for path in images[:2]],
                                            api_name="/segment_many")  # fmt: skip
    assert [torch.equal(label_map_of(png), expected[path.name]) for png, path in zip(pngs, images)] == [True, True]


def test_bad_uploads_get_a_message_not_a_traceback(server, workdir):
    client = gradio_client.Client(server.url, verbose=False)
    not_an_image = workdir / "notes.png"
    not_an_image.write_text("this is text, not a PNG")
    bomb = workdir / "bomb.png"
    bomb.write_bytes(_png_header(30_000, 30_000))  # 900 megapixels claimed: Pillow's decompression-bomb check
    large = workdir / "large.png"
    large.write_bytes(_png_header(6_000, 5_000))  # 30 megapixels: above the app's 25-megapixel limit
    for path, message in [
        (not_an_image, "notes.png: not an image file Pillow can read"),
        (bomb, "bomb.png: refused by Pillow's decompression-bomb limit"),
        (large, "large.png: 6000x5000 = 30.0 megapixels, above the limit --max-pixels 25000000"),
    ]:
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            client.predict(gradio_client.handle_file(str(path)), api_name="/segment")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (grey, 1 bit) with almost no data: read lazily, never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_concurrent_calls_are_all_answered_and_memory_stays_flat(server, images, expected):
    client = gradio_client.Client(server.url, verbose=False)
    jobs = [client.submit(gradio_client.handle_file(str(images[i % 4])), api_name="/segment") for i in range(16)]
    results = [job.result(timeout=300) for job in jobs]
    assert all(torch.equal(label_map_of(result[0]), expected[images[i % 4].name]) for i, result in enumerate(results))

    def calls(client, indices) -> None:
        for index in indices:
            client.predict(gradio_client.handle_file(str(images[index % 4])), api_name="/segment")

    calls(client, range(10))
    after_10 = server.rss()
    clients = [client, gradio_client.Client(server.url, verbose=False)]  # one client per thread: two calls at a time
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(calls, clients, [range(10, 100, 2), range(11, 100, 2)]))
    after_100 = server.rss()
    print(f"server resident memory: {after_10 / 2**20:.1f} MiB after 10 calls, {after_100 / 2**20:.1f} MiB after 100")
    assert after_100 <= after_10 * 1.05 + 8 * 2**20


# ------------------------------------------------------------------------------------------------ a real browser


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium (make test installs Debian's with apt-get as root)")
def test_the_page_in_a_real_browser(server, images, expected, tmp_path):
    from playwright.sync_api import sync_playwright

    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server.url, wait_until="domcontentloaded")
        page.wait_for_selector("#photo input[type=file]", state="attached", timeout=60_000)
        page.set_input_files("#photo input[type=file]", str(images[0]))
        page.wait_for_selector("#photo .file-preview, #photo table", timeout=30_000)
        page.click("#segment")
        page.wait_for_selector("#overlay img", timeout=60_000)
        link = page.wait_for_selector("#label-map a[href]", timeout=30_000)
        with urllib.request.urlopen(link.get_attribute("href")) as response:
            downloaded = tmp_path / "downloaded.png"
            downloaded.write_bytes(response.read())
        assert torch.equal(label_map_of(downloaded), expected[images[0].name])
        assert "Segmented 90x60 in" in page.inner_text("#summary")
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        if os.environ.get("FPN_SEG_WRITE_SCREENSHOT"):  # refresh docs/app.png, the README's picture
            shutil.copy(tmp_path / "app.png", SCREENSHOT)

        not_an_image = tmp_path / "notes.png"
        not_an_image.write_text("this is text, not a PNG")
        page.click("#photo button[aria-label='Clear']")
        page.set_input_files("#photo input[type=file]", str(not_an_image))
        page.wait_for_selector("#photo .file-preview, #photo table", timeout=30_000)
        page.click("#segment")
        page.wait_for_selector("text=notes.png: not an image file Pillow can read", timeout=30_000)
        assert "Traceback" not in page.content()
        browser.close()


# ------------------------------------------------------------------------------------------------ folders


def test_a_model_that_does_not_load_is_named_in_the_page(workdir):
    empty = workdir / "not_a_model"
    empty.mkdir(exist_ok=True)
    running = Server([sys.executable, "-m", "fpn_seg.app.command", str(empty)], workdir)
    try:
        config = json.loads(urllib.request.urlopen(running.url + "config").read())
        texts = " ".join(str(component.get("props", {}).get("value", "")) for component in config["components"])
        assert "does not load" in texts and "has no config.json and no weights" in texts
        client = gradio_client.Client(running.url, verbose=False)
        with pytest.raises(gradio_client.exceptions.AppError, match="does not load: .*has no config.json"):
            client.predict(gradio_client.handle_file(str(workdir / "photo_0.png")), api_name="/segment")
    finally:
        running.stop()


def test_an_onnx_folder_is_served_with_its_precisions(model_dir, images, expected, workdir):
    from fpn_seg.deployment import export_onnx

    export_onnx(model_dir, workdir / "onnx")
    service = SegmentationService(str(workdir / "onnx"))
    assert service.kind == "onnx" and service.precisions == ("fp32",)  # no model_quantized.onnx: no int8
    result = service.segment_file(images[0])
    assert (result.label_map == expected[images[0].name]).float().mean() > 0.999
    with pytest.raises(Exception, match="precision 'int8' is not available"):
        service.segment_file(images[0], precision="int8")


def test_an_onnx_folder_is_served_by_openvino_and_by_auto(model_dir, images, expected, workdir, tmp_path, monkeypatch):
    from fpn_seg.deployment import detect_cpu_capabilities, export_onnx

    monkeypatch.setenv("FPN_SEG_CACHE_DIR", str(tmp_path / "cache"))
    onnx_dir = workdir / "onnx_openvino"
    export_onnx(model_dir, onnx_dir)
    service = SegmentationService(str(onnx_dir), runtime="openvino")
    assert service.load_error is None and (service.runtime, service.kind) == ("openvino", "onnx")
    assert service.precisions == (("fp32", "bf16") if detect_cpu_capabilities().openvino_bf16 else ("fp32",))
    assert "OpenVINO." in service.describe()
    result = service.segment_file(images[0])
    assert (result.label_map == expected[images[0].name]).float().mean() > 0.999
    auto = SegmentationService(str(onnx_dir), runtime="auto", precision="fp32")
    assert auto.load_error is None and auto.choice.exact and auto.default_precision == "fp32"
    assert f"Runtime auto chose {auto.choice.summary()}." in auto.describe()
    bf16 = SegmentationService(str(onnx_dir), runtime="onnxruntime", precision="bf16")
    assert "does not load: ONNX Runtime runs fp32 and int8, not bf16" in bf16.load_error


def test_the_written_space_serves_from_a_fresh_process(model_dir, images, expected, workdir):
    space = write_space(str(model_dir), workdir / "space", examples=images[:1])
    assert {"app.py", "requirements.txt", "README.md", "fpn_seg", "model", "examples"} <= {p.name for p in space.iterdir()}
    front_matter = (space / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front_matter and "app_file: app.py" in front_matter
    requirements = (space / "requirements.txt").read_text()
    assert "gradio==" in requirements and "transformers==" in requirements and "torch==" in requirements
    running = Server([sys.executable, "-s", "app.py"], space, env={"PYTHONPATH": ""})
    try:
        client = gradio_client.Client(running.url, verbose=False)
        label_png, *_ = client.predict(gradio_client.handle_file(str(images[2])), api_name="/segment")
        assert torch.equal(label_map_of(label_png), expected[images[2].name])
        assert f"from {space / 'fpn_seg'}" in running.log.read_text()  # the Space's own copy of the package
    finally:
        running.stop()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_space(str(model_dir), space)
