"""report.html: self-contained, with its plots, and rendered by a real headless browser."""

import re
import shutil
import subprocess

import pytest

from .conftest import base_recipe
from .helpers import train_and_load

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def run_with_mix(tiny_model, tmp_path_factory):
    from .conftest import sentiment_rows

    tmp = tmp_path_factory.mktemp("html")
    data = tmp / "s.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in sentiment_rows(80)))
    recipe = base_recipe(tiny_model, data, max_steps=8, eval_every=2)
    recipe["stages"].append({"mix": {"alphas": [0.0, 0.5, 1.0], "ensemble": True, "probe_steps": 3}})
    train_and_load(recipe, tmp / "run")
    return tmp / "run"


def test_the_page_is_self_contained_and_has_its_plots(run_with_mix):
    page = (run_with_mix / "report.html").read_text()
    assert page.count("<svg") == 4  # loss curves, validation metric, confusion matrix, alpha sweep
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing fetched from elsewhere
    assert "Confusion matrix" in page and "Mixing with the pretrained model" in page
    assert "loss/task" in page  # the legend of the loss curves


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs it)")
def test_a_headless_browser_renders_the_page(run_with_mix, tmp_path):
    shot = tmp_path / "report.png"
    page = (run_with_mix / "report.html").resolve()
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and dom.stdout.count("<svg") == 4
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2000", page.as_uri()], capture_output=True, timeout=120, check=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a real page, not a blank one
