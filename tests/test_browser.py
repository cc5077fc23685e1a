"""The web page in a real headless browser (Debian's chromium, driven by Playwright) against a real
uvicorn server on 127.0.0.1 serving a tiny trained model. Screenshots of the page with an answer go to
the test's temporary folder and, when $BANKINTENT_SCREENSHOT_DIR is set, there too."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from bankintent import Predictor, train
from bankintent.predict import model_folder
from bankintent.serving import create_app, serve_in_background
from conftest import tiny_options

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium missing: apt-get install -y chromium (make browser)")


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser_run")
    train(**tiny_options(tiny_bert, tiny_data, folder))
    return folder


@pytest.fixture(scope="module")
def served(run):
    with serve_in_background(create_app(model_dir=run)) as url:
        yield url, run


LONG_NAME = "card_arrival_after_requesting_a_replacement_card"  # longer than any Banking77 intent


@pytest.fixture(scope="module")
def served_out_of_scope(run, tmp_path_factory):
    """The same model with every out-of-scope threshold below any score (every answer is out of scope)
    and a long intent name."""
    folder = tmp_path_factory.mktemp("everything_out") / "outside"
    shutil.copytree(model_folder(run), folder)
    labels = json.loads((folder / "labels.json").read_text())
    (folder / "labels.json").write_text(json.dumps([LONG_NAME if label == "card_arrival" else label for label in labels]))
    spec = json.loads((folder / "bankintent.json").read_text())
    spec["oos_thresholds"] = {name: -1e6 for name in spec["oos_thresholds"]}
    (folder / "bankintent.json").write_text(json.dumps(spec))
    with serve_in_background(create_app(model_dir=folder)) as url:
        yield url, folder


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, width: int = 1000):
    page = browser.new_page(viewport={"width": width, "height": 760})
    page.set_default_timeout(20_000)
    page.goto(url)
    page.wait_for_selector("#intent-list:not([hidden])")  # the model described
    return page


@pytest.fixture()
def page(browser, served):
    page = open_page(browser, served[0])
    yield page
    page.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("BANKINTENT_SCREENSHOT_DIR"):
        folder = Path(os.environ["BANKINTENT_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    return path


def js_number(x: float) -> str:
    """How the page writes a score: 4 significant digits, as JavaScript prints the number."""
    value = float(f"{x:.4g}")
    return str(int(value)) if value.is_integer() else repr(value)


def ask(page, query: str) -> None:
    page.fill("#query", query)
    page.click("#submit")
    page.wait_for_selector("#answer:not([hidden])")


def test_the_page_names_the_model_and_its_intents(page, served):
    info = page.text_content("#model-info")
    method = Predictor.load(served[1]).spec.method
    assert info.startswith(f"Model {served[1].name} · {method} on ") and info.endswith(" · 4 intents")
    predictor = Predictor.load(served[1])
    assert page.text_content("#fallback") == (f"A query is out of scope when its {predictor.oos_score} score is above "
                                              f"{js_number(predictor.oos_threshold)}.")
    assert page.text_content("#intent-count") == "Show the 4 intents"
    assert [li.text_content() for li in page.query_selector_all("#intents li")] == INTENTS


def test_typing_a_query_shows_intent_confidence_latency_and_top_5_bars(page, served, tmp_path):
    query = "my card was stolen"
    ask(page, query)
    expected = Predictor.load(served[1]).predict([query], top_k=5)[0]
    assert not expected["out_of_scope"]
    assert page.text_content("#intent") == expected["intent"]
    assert page.text_content("#confidence") == f"{100 * expected['confidence']:.1f}%"
    assert re.fullmatch(r"answered in \d+ ms", page.text_content("#latency"))
    evidence = page.text_content("#evidence")
    assert evidence.startswith(f"Out-of-scope score ({expected['oos_method']}) ") and "is within the threshold" in evidence
    assert page.is_hidden("#closest") and page.is_hidden("#error")
    assert page.text_content("#bars-title") == "Most probable intents"
    rows = page.query_selector_all("#bars .row")
    assert len(rows) == len(expected["top_k"]) == 4  # the tiny model knows 4 intents
    for row, ranked in zip(rows, expected["top_k"]):
        label = row.query_selector(".label")
        assert label.text_content() == ranked["intent"]
        assert label.evaluate("e => e.scrollWidth <= e.clientWidth")  # the whole name shows, none clipped
        assert row.query_selector(".value").text_content() == f"{100 * ranked['confidence']:.1f}%"
        width = row.query_selector(".fill").evaluate("e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width")
        assert width == pytest.approx(ranked["confidence"], abs=0.01)
    screenshot(page, tmp_path, "page_in_scope.png")


@pytest.fixture(scope="module")
def served_airline(run, tmp_path_factory):
    """The same model with intents that are not Banking77's."""
    folder = tmp_path_factory.mktemp("airline") / "airline"
    shutil.copytree(model_folder(run), folder)
    (folder / "labels.json").write_text(json.dumps(["book_flight", "lost_baggage", "refund", "seat_selection"]))
    with serve_in_background(create_app(model_dir=folder)) as url:
        yield url, folder


def test_the_banking_examples_show_only_where_the_model_has_their_intents(browser, served, served_out_of_scope, served_airline):
    shown = {}
    for name, (url, _) in (("banking", served), ("card_arrival renamed", served_out_of_scope), ("airline", served_airline)):
        page = open_page(browser, url)
        shown[name] = [b.text_content() for b in page.query_selector_all(".example") if b.is_visible()]
        shown[name + " placeholder"] = page.get_attribute("#query", "placeholder")
        page.close()
    assert shown["banking"] == ["I lost my card", "Why did my top-up fail?", "My new card still hasn't arrived",
                                "What exchange rate will I get for euros?", "What's the weather tomorrow?"]
    assert "My new card still hasn't arrived" not in shown["card_arrival renamed"] and len(shown["card_arrival renamed"]) == 4
    assert shown["banking placeholder"] == "Type a customer's message, e.g. I lost my card"
    assert shown["airline"] == [] and shown["airline placeholder"] == "Type a customer's message"


def test_an_example_query_is_one_click(page, served):
    example = page.query_selector_all(".example")[0]
    text = example.text_content()
    example.click()
    page.wait_for_selector("#answer:not([hidden])")
    assert page.input_value("#query") == text
    assert page.text_content("#intent") == Predictor.load(served[1]).predict([text])[0]["intent"]


def test_an_out_of_scope_answer_shows_its_own_evidence_and_the_closest_intent(browser, served_out_of_scope, tmp_path):
    page = open_page(browser, served_out_of_scope[0])
    query = "what's the weather tomorrow?"
    ask(page, query)
    expected = Predictor.load(served_out_of_scope[1]).predict([query], top_k=5)[0]
    assert expected["out_of_scope"] and expected["confidence"] is None
    assert page.text_content("#intent") == "out of scope"
    assert page.is_hidden("#confidence") and page.is_hidden("#confidence-caption")  # no intent's probability passed off as the confidence of "out of scope"
    assert "%" not in page.text_content(".headline")
    assert page.text_content("#evidence") == (f"Out-of-scope score ({expected['oos_method']}) {js_number(expected['oos_score'])}"
                                              " is above the threshold -1000000: no intent fits this query.")
    closest = expected["top_k"][0]
    assert page.text_content("#closest") == f"Closest intent: {closest['intent']} (probability {100 * closest['confidence']:.1f}%)"
    assert page.text_content("#bars-title") == "Closest intents"
    assert [label.text_content() for label in page.query_selector_all("#bars .label")] == [r["intent"] for r in expected["top_k"]]
    assert LONG_NAME in page.text_content("#bars")
    screenshot(page, tmp_path, "page_out_of_scope.png")
    page.close()


@pytest.mark.parametrize("width", [1000, 420])
def test_long_intent_names_are_shown_whole(browser, served_out_of_scope, width):
    page = open_page(browser, served_out_of_scope[0], width)
    ask(page, "where is my new card")
    labels = page.query_selector_all("#bars .label")
    assert LONG_NAME in [label.text_content() for label in labels]
    for label in labels:  # wrapped on a narrow screen, never cut off, and within the page
        assert label.evaluate("e => e.scrollWidth <= e.clientWidth && e.getBoundingClientRect().right <= window.innerWidth")
    page.click("#intent-list summary")
    assert LONG_NAME in [li.text_content() for li in page.query_selector_all("#intents li")]
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    page.close()


def test_a_rejected_query_shows_the_services_message(page):
    page.fill("#query", "   ")
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == "texts[0]: empty text"
    assert page.is_hidden("#answer")
