"""The web page in a real headless browser (Debian's chromium, driven by Playwright) against a real
uvicorn server on 127.0.0.1 serving a tiny trained model."""

from pathlib import Path

import pytest

from bankintent import Predictor, train
from bankintent.serving import create_app, serve_in_background
from conftest import tiny_options

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium missing: apt-get install -y chromium")


@pytest.fixture(scope="module")
def served(tiny_bert, tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("browser_run")
    train(**tiny_options(tiny_bert, tiny_data, run))
    with serve_in_background(create_app(model_dir=run)) as url:
        yield url, run


@pytest.fixture()
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(served[0])
            yield page
        finally:
            browser.close()


def test_typing_a_query_shows_intent_confidence_and_top_5_bars(page, served):
    query = "my card was stolen"
    page.fill("#query", query)
    page.click("#submit")
    page.wait_for_selector("#answer:not([hidden])")

    expected = Predictor.load(served[1]).predict([query], top_k=5)[0]
    assert page.text_content("#intent") == expected["intent"]
    assert page.text_content("#confidence") == f"{100 * expected['confidence']:.1f}%"
    assert page.is_hidden("#oos") and page.is_hidden("#error")
    rows = page.query_selector_all("#bars .row")
    assert len(rows) == len(expected["top_k"]) == 4  # the tiny model knows 4 intents
    for row, ranked in zip(rows, expected["top_k"]):
        assert row.query_selector(".label").text_content() == ranked["intent"]
        assert row.query_selector(".value").text_content() == f"{100 * ranked['confidence']:.1f}%"
        width = row.query_selector(".fill").evaluate("e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width")
        assert width == pytest.approx(ranked["confidence"], abs=0.01)


def test_a_rejected_query_shows_the_services_message(page):
    page.fill("#query", "   ")
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == "texts[0]: empty text"
    assert page.is_hidden("#answer")
