"""The pages in a real browser (Playwright driving the system's Chromium) against a real
`nas serve`: launch a search, watch its trials arrive on the front, hover, compare, distill,
read the model card; every page checked for accessibility basics with axe-core. Screenshots
of each step go to the test's folder."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from tests.nas.service.conftest import Server

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's)"),
    pytest.mark.slow,
]

AXE_RULES = [
    "label",  # every form field is labelled
    "select-name",
    "button-name",
    "link-name",
    "image-alt",
    "role-img-alt",
    "color-contrast",
    "document-title",
    "html-has-lang",
    "page-has-heading-one",
    "heading-order",
    "empty-heading",
    "list",
    "th-has-data-cells",
    "duplicate-id-aria",
    "aria-valid-attr-value",
    "bypass",
    "landmark-one-main",
]


def until(condition, timeout_s: float) -> None:
    """Poll `condition` from here (the pages' Content-Security-Policy forbids the in-page
    evaluation of strings that Playwright's wait_for_function uses)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)


def accessible(page) -> None:
    """No violation of the accessibility basics on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "rule", "values": AXE_RULES}})
    problems = [
        f"{v['id']}: {v['help']} ({', '.join(str(n['target']) for n in v['nodes'][:3])})"
        for v in results.response["violations"]
    ]
    assert not problems, f"{page.url}:\n" + "\n".join(problems)


def test_launch_watch_compare_and_distill_in_a_browser(studies, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    server = Server(studies)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP refusals too
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(server.url) or r.url.startswith("data:") else outside.append(r.url))

            page.goto(server.url + "/")
            expect(page.get_by_role("heading", name="Studies", exact=True)).to_be_visible()
            page.screenshot(path=shots / "1-studies.png", full_page=True)
            accessible(page)

            # launch a 3-trial search from the page; the study page shows trials as they finish
            page.get_by_label("Study spec").select_option("tiny.toml")
            page.get_by_label("Architectures in total").fill("3")
            page.get_by_role("button", name="Start the search").click()
            page.wait_for_url(re.compile(r"/studies/tiny$"))
            page.evaluate("window.notReloaded = true")
            points = "#front-plot .scatterlayer .trace .points path"
            until(lambda: page.locator(points).count() >= 1, 120)
            page.screenshot(path=shots / "2-first-trials.png", full_page=True)
            expect(page.locator("#study-summary")).to_contain_text("3/3 architectures done", timeout=180_000)
            until(lambda: page.locator(points).count() >= 4, 10)  # 3 trials and the teacher
            assert page.evaluate("window.notReloaded === true"), "the page reloaded"
            assert page.locator("#trials tbody tr").count() >= 3  # and any repeat of an architecture
            page.screenshot(path=shots / "3-front.png", full_page=True)
            accessible(page)

            # hover a trial's point: its architecture and metrics
            trial_point = page.locator("#front-plot .scatterlayer .trace").nth(1).locator(".points path").first
            box = trial_point.bounding_box()  # the mouse over it, as a person moves it (plotly's drag layer is on top)
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            hover = page.locator("#front-plot .hoverlayer .hovertext")
            expect(hover).to_be_visible()
            text = hover.text_content()
            assert "family:" in text and "layers:" in text and "perplexity:" in text, text
            page.screenshot(path=shots / "4-hover.png")

            # sort the table, then compare two trials side by side
            page.locator("#trials thead button", has_text="params").first.click()
            expect(page.locator("#trials thead th[aria-sort]")).to_have_count(1)
            boxes = page.locator("#trials tbody input[type=checkbox]")
            boxes.nth(0).check()
            boxes.nth(1).check()
            page.get_by_role("button", name=re.compile("Compare the selected")).click()
            page.wait_for_url(re.compile(r"/compare\?trials="))
            expect(page.locator("#compare thead th")).to_have_count(4)  # setting, two trials, teacher
            expect(page.locator("#compare")).to_contain_text("perplexity")
            page.screenshot(path=shots / "5-compare.png", full_page=True)
            accessible(page)

            # distill the first trial with a budget changed on the page; follow it to its export
            page.locator("#compare thead a").first.click()
            page.wait_for_url(re.compile(r"/trials/\d+$"))
            accessible(page)
            trial_page = page.url
            expect(page.locator("table.eval-set")).to_contain_text("topics perplexity")  # brief run and teacher
            page.get_by_label("steps", exact=True).fill("60")
            page.screenshot(path=shots / "6-trial.png", full_page=True)
            page.get_by_role("button", name="Start the full distillation").click()
            page.wait_for_url(re.compile(r"/jobs/"))
            expect(page.locator("#job-state")).to_have_text("completed", timeout=180_000)
            expect(page.locator("#job-figures")).to_contain_text("step 60/60")
            assert page.locator("#job-progress").evaluate("p => p.value") == 1
            expect(page.locator("#job-export")).to_contain_text("students")
            expect(page.locator("#job-command")).to_contain_text("full.steps=60")
            expect(page.locator("#job-card")).to_contain_text("distill-nas")
            page.screenshot(path=shots / "7-distilled.png", full_page=True)
            accessible(page)
            # the trial's page now puts the full run beside the brief run and the teacher, on every set
            page.goto(trial_page)
            expect(page.locator("table.eval-set thead")).to_contain_text("Full run")
            cells = page.locator("table.eval-set tbody tr").first.locator("td").all_inner_texts()
            assert len(cells) == 3 and all(c.strip() not in ("", "-") for c in cells), cells

            # the API's own page, served offline, documents the endpoints the pages use
            page.goto(server.url + "/docs")
            expect(page.get_by_text("/api/searches").first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("/api/studies/{name}/distill").first).to_be_visible()
            browser.close()
        assert not errors, errors
        assert not outside, outside
    finally:
        server.stop()
    assert sorted(p.name for p in shots.iterdir()) == [f"{i}-{n}.png" for i, n in enumerate(
        ["studies", "first-trials", "front", "hover", "compare", "trial", "distilled"], 1)]
