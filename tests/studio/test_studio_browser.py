"""The Studio driven in a real browser (Debian's headless chromium through Playwright) on a temporary root with
the tiny model: a new run from examples/quickstart.yaml with a typo fixed in the editor, the plan, start, live
progress, stop, resume, a second run to compare, the playground and a GGUF export. Screenshots go to the test's
folder, or to $STUDIO_SCREENSHOTS when set (docs/studio.png comes from there)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from studio_server import Studio, make_root, status_of, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


@pytest.fixture()
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: apt-get install -y chromium (.ci/run does)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        yield page
        browser.close()


def set_yaml(page, text: str) -> None:
    page.fill("#yaml", text)
    page.dispatch_event("#yaml", "input")


def run_status(studio: Studio, name: str) -> str | None:
    return status_of(studio.json("/api/runs")["runs"], name)


def test_studio_in_a_browser(browser_page, tmp_path, tiny_model_dir):
    page = browser_page
    shots = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screens")
    shots.mkdir(parents=True, exist_ok=True)
    root = make_root(tmp_path / "root", tiny_model_dir)
    studio = Studio(root)
    try:
        # --- open the Studio; a new run from examples/quickstart.yaml
        page.goto(studio.url)
        page.click("text=New run")
        page.select_option("#start-from", "examples/quickstart.yaml")
        page.wait_for_url(re.compile(r"from=examples"))
        text = page.input_value("#yaml")
        assert "base_model: models/tiny" in text
        text = text.replace("num_epochs: 3", "num_epochs: 3\nmax_steps: 120")  # long enough to stop half-way

        # --- a typo: its message at its line; fixed, the plan shows
        typo = text + "lora_alhpa: 16\n"
        set_yaml(page, typo)
        line = typo.splitlines().index("lora_alhpa: 16") + 1
        problem = page.wait_for_selector(f"#problems li[data-line='{line}']")
        assert "lora_alhpa" in problem.inner_text() and "lora_alpha" in problem.inner_text()
        assert page.inner_text("#gutter .bad") == str(line)
        page.screenshot(path=str(shots / "editor-typo.png"))
        set_yaml(page, text)
        page.wait_for_selector("#problems li.ok")
        verdict = page.wait_for_selector("#plan-verdict")
        assert "fits" in verdict.inner_text()
        page.click("#preview-btn")
        page.wait_for_selector(".row-preview .trained")
        page.fill("#run-name-input", "first")
        assert page.inner_text("#command") == "finetune train configs/first.yml"
        page.screenshot(path=str(shots / "new-run.png"), full_page=True)

        # --- start: the step counter and the loss chart advance
        page.click("#start")
        page.wait_for_url(re.compile(r"/run\?name=outputs"))
        page.wait_for_function("document.querySelector('#step').textContent.match(/^[1-9]\\d* \\/ 120/)")
        points = int(page.wait_for_selector("#loss-chart[data-points]").get_attribute("data-points"))
        page.wait_for_function(f"+document.querySelector('#loss-chart').dataset.points > {points}")
        page.screenshot(path=str(shots / "run-live.png"), full_page=True)

        # --- stop (a checkpoint), resume, it finishes
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('interrupted')")
        stopped_at = int(page.inner_text("#step").split("/")[0])
        assert 0 < stopped_at < 120
        page.click("#resume")
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'finished'", timeout=300_000
        )
        assert page.inner_text("#step").startswith("120")
        assert "resuming from" in page.text_content("#run-jobs")
        page.wait_for_selector("#card h3")  # the card, rendered
        page.screenshot(path=str(shots / "run-finished.png"), full_page=True)

        # --- a second run (another lora_r, another output_dir) and the comparison
        page.goto(studio.url + "/new?from=configs/first.yml")
        second = text.replace("lora_r: 8", "lora_r: 4").replace("outputs/quickstart", "outputs/second")
        second = second.replace("max_steps: 120", "max_steps: 20")
        set_yaml(page, second)
        page.wait_for_selector("#problems li.ok")
        page.fill("#run-name-input", "second")
        page.click("#start")
        page.wait_for_url(re.compile(r"name=outputs(/|%2F)second"))
        wait_for(lambda: run_status(studio, "outputs/second") == "finished", timeout=300)
        page.goto(studio.url)
        page.check("input[data-name='outputs/quickstart']")
        page.check("input[data-name='outputs/second']")
        page.click("#compare")
        page.wait_for_url(re.compile(r"/compare"))
        assert page.locator("#compare-chart > path.curve").count() == 2  # drawn, not nested
        diff = page.inner_text("#diff")
        assert "lora_r" in diff and "output_dir" in diff and "learning_rate" not in diff
        page.screenshot(path=str(shots / "compare.png"), full_page=True)

        # --- the playground: the base and both runs, one prompt, streamed answers (the tiny runs may end their
        # turn at once: they learnt the short answers' end of turn; the random base rambles on)
        page.goto(studio.url + "/playground")
        page.check("#with-base")
        page.select_option("#run-a", "outputs/quickstart")
        page.select_option("#run-b", "outputs/second")
        page.fill("#max-new", "12")
        page.fill("#prompt", "What is liquidity?")
        page.click("#send")
        page.wait_for_selector("#answer-2[data-done='1']", timeout=300_000)
        assert page.inner_text("#answers h3 >> nth=0").startswith("base")
        assert page.inner_text("#answer-0").strip() and page.get_attribute("#answer-0", "data-chunks")
        for i in (1, 2):
            streamed = page.get_attribute(f"#answer-{i}", "data-chunks")
            assert streamed or "ended its turn" in page.inner_text(f"#answer-{i}")
        page.screenshot(path=str(shots / "playground.png"), full_page=True)

        # --- export GGUF from the run page
        page.goto(studio.url + "/run?name=outputs/quickstart")
        page.click("#export")
        page.wait_for_function(
            "[...document.querySelectorAll('#run-jobs summary')].some(s => s.textContent.includes('export')"
            " && s.querySelector('.job-status').textContent === 'done')",
            timeout=300_000,
        )
        assert list((root / "exports").glob("*/*.gguf"))
        page.screenshot(path=str(shots / "run-exported.png"), full_page=True)
    finally:
        studio.kill()
        for job in (root / ".studio" / "jobs").glob("*.proc.json"):
            pid = json.loads(job.read_text()).get("child_pid")
            if pid and Path(f"/proc/{pid}").exists():
                os.kill(pid, 9)
