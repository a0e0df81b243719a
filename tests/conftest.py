import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402

from hub import Hub  # noqa: E402


@pytest.fixture(scope="session")
def hub() -> Hub:
    return Hub()
