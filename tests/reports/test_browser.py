"""The report opens in a real headless browser (Debian's chromium) and every chart decodes.

Skipped when chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from recscale.reports.report import write_report

from .fake_runs import write_run, write_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100).length;
  const box = document.createElement("div");
  box.id = "image-check";
  box.textContent = `decoded ${ok} of ${imgs.length}; page ${document.body.scrollWidth}x${document.body.scrollHeight}`;
  document.body.appendChild(box);
});
</script></body>"""


def _chromium(*args: str, profile: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_page_loads_in_chromium_with_every_image_decoded(tmp_path, kind):
    source = write_run(tmp_path / "run", profile=True) if kind == "run" else write_sweep(tmp_path / "sweep")
    page = write_report([source])
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CHECK))
    proc = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=str(tmp_path / "profile"))
    found = re.search(r'id="image-check">decoded (\d+) of (\d+); page (\d+)x(\d+)<', proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    decoded, total, width, height = map(int, found.groups())
    assert total >= 4 and decoded == total
    assert width > 600 and height > 1200  # laid out, charts at their size


def test_screenshot_shows_the_charts(tmp_path):
    from PIL import Image

    page = write_report([write_run(tmp_path / "run")])
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,1800", page.as_uri(), profile=str(tmp_path / "profile"))
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1800)
    colors = image.resize((120, 180)).getcolors(maxcolors=100_000)
    assert colors is not None and len(colors) > 50  # text, tables and plotted lines, not a blank page
    blue = sum(n for n, (r, g, b) in colors if b > 150 and r < 90 and g < 160)  # matplotlib's C0 lines and bars
    assert blue > 20
