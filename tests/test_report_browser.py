"""The Snakemake HTML report opens in a (headless) browser with its figures.

A tiny synthetic workflow marks two PNGs, a JPEG and a TSV with report(); its
``snakemake --report`` file is opened in headless Chromium, every embedded image must decode at
the pixel size of the file on disk, the React app must render its menu and show one image
through it. Needs chromium (installed with apt-get when missing and running as root).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report_browser  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SIZES = {"wide": (96, 40), "tall": (30, 70)}

SNAKEFILE = textwrap.dedent(
    """
    from PIL import Image

    SIZES = {sizes!r}


    rule all:
        input:
            expand("plots/{{name}}.png", name=SIZES),
            "plots/photo.jpg",
            "tables/counts.tsv",


    rule plot:
        output:
            report("plots/{{name}}.png", category="Plots", subcategory="{{name}}"),
        run:
            w, h = SIZES[wildcards.name]
            im = Image.new("RGB", (w, h))
            im.putdata([(255 * x // w, 255 * y // h, 128) for y in range(h) for x in range(w)])
            im.save(output[0])


    rule photo:
        output:
            report("plots/photo.jpg", category="Plots", subcategory="photo"),
        run:
            Image.new("RGB", (50, 20), (10, 200, 30)).save(output[0], quality=90)


    rule table:
        output:
            report("tables/counts.tsv", category="Tables"),
        run:
            with open(output[0], "w") as fh:
                fh.write("name\\twidth\\theight\\n")
                for name, (w, h) in SIZES.items():
                    fh.write(f"{{name}}\\t{{w}}\\t{{h}}\\n")
    """
).format(sizes=SIZES)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = report_browser.ensure_chromium()
    if path is None:
        pytest.skip(f"no headless browser: {report_browser.unavailable_reason}")
    return path


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("report_browser")
    (work / "Snakefile").write_text(SNAKEFILE)
    proc = run("--cores", "1", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run("--report", "x.html", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "x.html").stat().st_size > 10000
    return work


@pytest.mark.slow
def test_report_opens_in_browser_with_its_figures(chromium, tiny_report, tmp_path):
    files = {
        **{f"plots/{n}.png": SIZES[n] for n in SIZES},
        "plots/photo.jpg": (50, 20),
    }
    for rel, size in files.items():
        with Image.open(tiny_report / rel) as im:
            assert im.size == size

    r = report_browser.assert_report_loads(tiny_report / "x.html", out_dir=tmp_path)
    assert r["chromium"] == chromium

    # every report()-marked file is embedded, and every image decoded at the size on disk
    assert r["n_results"] == 4 and r["n_images"] == 3
    got = {rec["path"]: (rec["naturalWidth"], rec["naturalHeight"]) for rec in r["images"]}
    assert got == files
    assert {rec["path"]: rec["mime_type"] for rec in r["images"]} == {
        "plots/wide.png": "image/png",
        "plots/tall.png": "image/png",
        "plots/photo.jpg": "image/jpeg",
    }
    assert all(rec["decoded"] and rec["error"] is None for rec in r["images"])

    # the app rendered its menu (both categories) and showed an image clicked open through it
    assert r["title"] == "Snakemake Report" and r["app_rendered"]
    assert sorted(r["categories"]) == ["Plots", "Tables"]
    assert r["categories_in_dom"] == {"Plots": True, "Tables": True}
    c = r["clicked"]
    assert c["category"] == "Plots" and c["img_rendered"] and c["error"] is None
    assert (c["naturalWidth"], c["naturalHeight"]) == files[c["result_path"]]
    assert c["displayWidth"] > 0 and c["displayHeight"] > 0
    assert r["page_errors"] == []
    with Image.open(r["screenshot"]) as shot:
        assert shot.size == (1280, 900)
        # the screenshot is not blank: the app draws a dark navbar beside the content
        lo, hi = shot.convert("L").getextrema()
        assert hi - lo > 100


@pytest.mark.slow
def test_broken_image_is_reported(chromium, tiny_report, tmp_path):
    """The check sees a figure that does not load: one PNG's bytes are replaced by junk."""
    html = (tiny_report / "x.html").read_text()
    pattern = r"(filename=wide\.png;base64,)[A-Za-z0-9+/=]+"
    assert len(re.findall(pattern, html)) == 1
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really a png" * 4).decode()
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(pattern, lambda m: m.group(1) + junk, html))

    r = report_browser.check_report_in_browser(broken, out_dir=tmp_path / "shots")
    by_path = {rec["path"]: rec for rec in r["images"]}
    assert r["n_images"] == 3 and len(by_path) == 3
    assert not by_path["plots/wide.png"]["decoded"], json.dumps(by_path, indent=1)
    assert by_path["plots/wide.png"]["naturalWidth"] == 0
    assert by_path["plots/tall.png"]["decoded"] and by_path["plots/photo.jpg"]["decoded"]
    assert not r["all_images_decoded"]
    with pytest.raises(AssertionError):
        report_browser.assert_report_loads(broken, out_dir=tmp_path / "shots2")
