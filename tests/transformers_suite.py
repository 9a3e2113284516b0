"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`), taken from the
sdist of the installed transformers version on the package registry.

    python tests/transformers_suite.py          # download (once) and unpack into .cache/transformers-tests/<version>

`make test` runs this before pytest; the tests themselves never touch the network. The sdist ships `tests/*.py` but
not the helper modules three of them import (`tests/exporters/test_export.py`, `tests/generation/test_utils.py`,
`tests/utils/test_configuration_utils.py`, `utils/fetch_hub_objects_for_ci.py`, which live only in transformers' git
repository); stand-ins written here take their place:

- `ExportTesterMixin` (the base of `ModelTesterMixin`, holding torch.export tests): an empty mixin, so the export
  tests are not run (fpn_seg's ONNX export is tested in `tests/test_deployment.py`);
- `GenerationTesterMixin`: an empty mixin (Semantic FPN does not generate);
- `config_common_kwargs`: the common `PreTrainedConfig` fields with non-default values;
- `url_to_local_path`: refuses URLs (no network in tests); only tests that load hub images call it.
"""

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "transformers-tests"
PACKAGE = "transformers_tests"  # the sdist's `tests/`, renamed so as not to clash with this project's `tests`

STAND_INS = {
    "__init__.py": "",
    "exporters/__init__.py": "",
    "exporters/test_export.py": '''"""Stand-in (fpn_seg): the sdist lacks tests/exporters; its export tests are not run."""


class ExportTesterMixin:
    pass
''',
    "generation/__init__.py": "",
    "generation/test_utils.py": '''"""Stand-in (fpn_seg): the sdist lacks tests/generation; Semantic FPN does not generate."""


class GenerationTesterMixin:
    pass
''',
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": '''"""Stand-in (fpn_seg): common PreTrainedConfig fields with non-default values."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["SemanticFPNForSemanticSegmentation"],
    "id2label": {0: "label_0", 1: "label_1"},
    "label2id": {"label_0": "0", "label_1": "1"},
    "problem_type": "single_label_classification",
}
''',
}
FETCH_HELPER = '''"""Stand-in (fpn_seg): no network in tests."""


def url_to_local_path(url, *args, **kwargs):
    raise RuntimeError(f"this test needs a hub file ({url}); fpn_seg runs transformers' common tests offline")
'''


def suite_root(version: str = transformers.__version__) -> Path:
    """Where the unpacked suite of `version` lives: `<root>/transformers_tests/...` and `<root>/utils/`."""
    return CACHE / version


def fetch(version: str = transformers.__version__) -> Path:
    """Download the transformers sdist of `version` from the package index (once), unpack its `tests/*.py` as the
    package `transformers_tests` and write the stand-ins; returns the folder to put on `sys.path`."""
    root = suite_root(version)
    marker = root / ".complete"
    if marker.is_file():
        return root
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"transformers=={version}", "--dest", download],
            check=True,
        )  # fmt: skip
        (archive,) = Path(download).glob("transformers-*.tar.gz")
        package = root / PACKAGE
        package.mkdir(parents=True, exist_ok=True)
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = member.name[len(prefix):] if member.name.startswith(prefix) else None
                if member.isfile() and name and "/" not in name and name.endswith(".py"):
                    (package / name).write_bytes(tar.extractfile(member).read())
    for name, text in STAND_INS.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    (root / "utils").mkdir(exist_ok=True)
    (root / "utils" / "fetch_hub_objects_for_ci.py").write_text(FETCH_HELPER)
    marker.write_text(version + "\n")
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=transformers.__version__, help="transformers version (default: installed)")
    args = parser.parse_args(argv)
    print(f"transformers {args.version} common tests in {fetch(args.version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
