"""The chat page at ``GET /`` (cs_lightning/serving/static/chat.html) in a real browser: Debian's chromium and
chromedriver driven by selenium, headless, against ``cs-serve`` subprocesses on the tiny intent and reply exports.
Nothing is downloaded: the driver and the browser are the system's (``.ci/run`` installs them with apt), and the
browser tests skip, saying why, only where they are not installed."""

import json
import os
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_serve import Server, call  # noqa: E402

XSS = '<img src=x onerror="window.__xss=1"><b>bold</b>'


def system_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) of the system, or None."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.access(p, os.X_OK)), None)
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def page_exports(intent_checkpoint, reply_checkpoint, tmp_path_factory):
    """The tiny intent and reply exports and a rules file whose required apology the reply model never says."""
    from cs_lightning.export import export

    root = tmp_path_factory.mktemp("page")
    rules = root / "rules.yaml"
    rules.write_text(json.dumps({"required": [{"name": "apology", "when_context": "parcel", "pattern": "sorry"}]}))
    return {"root": root, "intent": export(intent_checkpoint, root / "intent"),
            "reply": export(reply_checkpoint, root / "reply"), "rules": rules}


@pytest.fixture
def browser(monkeypatch):
    """A headless chromium through the system's chromedriver (Selenium Manager never asked to download)."""
    found = system_browser()
    if found is None:
        pytest.skip("no chromium + chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed "
                                    "(pip install 'cs-lightning[browser]')")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=found[1]))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def send(driver, text: str, customers: int) -> None:
    """Type ``text`` as the customer, press Enter, wait until the page has the answers (Send enabled again)."""
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "message")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    wait(driver, lambda d: len(d.find_elements("css selector", "#transcript li.customer")) == customers
         and d.find_element("id", "send").is_enabled())


def test_page_is_served_without_the_key_with_a_strict_policy(page_exports):
    """GET / needs no API key (the page asks for it), is HTML, and its policy allows no script but its own."""
    srv = Server(page_exports["root"], "--intent", str(page_exports["intent"]), "--api-key", "s3cret")
    try:
        srv.wait_ready()
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", "/")
        resp = conn.getresponse()
        html = resp.read().decode()
        assert resp.status == 200 and resp.getheader("content-type").startswith("text/html")
        policy = resp.getheader("content-security-policy")
        assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy and "connect-src 'self'" in policy
        assert '<label for="message">' in html and "innerHTML" not in html
        assert call(srv.port, "POST", "/v1/intent", {"text": "refund please"})[0] == 401  # the API is still gated
    finally:
        srv.stop()


def test_chat_page_shows_reply_intent_and_rules_and_escapes_html(page_exports, browser):
    srv = Server(page_exports["root"], "--intent", str(page_exports["intent"]), "--reply", str(page_exports["reply"]),
                 "--rules", str(page_exports["rules"]))
    try:
        srv.wait_ready()
        browser.get(f"http://127.0.0.1:{srv.port}/")
        wait(browser, lambda d: text_of(d, "models").startswith("Ready"))
        assert not browser.find_element("id", "key-row").is_displayed()  # no key on this server

        send(browser, "where is my parcel", 1)
        _, intent, _ = call(srv.port, "POST", "/v1/intent", {"text": "where is my parcel", "history": []})
        _, whole, _ = call(srv.port, "POST", "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "where is my parcel"}]})
        assert text_of(browser, "intent-label") == intent["label"]
        assert text_of(browser, "intent-confidence") == f"{100 * intent['confidence']:.1f}%"
        assert text_of(browser, "intent-oos") == ("yes: outside what the model knows" if intent["oos"] else "no")
        assert len(browser.find_elements("css selector", "#intent-top li")) == len(intent["top_k"])
        agent = browser.find_elements("css selector", "#transcript li.agent .text")
        assert len(agent) == 1 and agent[0].text and agent[0].text == whole["choices"][0]["message"]["content"]
        assert text_of(browser, "rules") == "Broken: apology" == "Broken: " + ", ".join(whole["cs_rule_violations"])
        assert text_of(browser, "status") == ""

        send(browser, XSS, 2)  # the customer's HTML is text, and so is whatever the model answers to it
        customer = browser.find_elements("css selector", "#transcript li.customer .text")[-1]
        assert customer.get_property("textContent") == XSS
        assert browser.find_elements("css selector", "#transcript img, #transcript b") == []
        assert browser.execute_script("return window.__xss") is None
        assert len(browser.find_elements("css selector", "#transcript li.agent")) == 2
        assert text_of(browser, "status") == ""
    finally:
        srv.stop()


def test_chat_page_with_an_intent_model_only_and_an_api_key(page_exports, browser):
    """Intent only: no reply, the intent panel; the server's key goes in the page's field and is sent as a header."""
    srv = Server(page_exports["root"], "--intent", str(page_exports["intent"]), "--api-key", "s3cret")
    try:
        srv.wait_ready()
        browser.get(f"http://127.0.0.1:{srv.port}/")
        wait(browser, lambda d: d.find_element("id", "key-row").is_displayed())
        assert "intent only" in text_of(browser, "models")
        browser.find_element("id", "api-key").send_keys("s3cret")
        send(browser, "refund please", 1)
        _, intent, _ = call(srv.port, "POST", "/v1/intent", {"text": "refund please", "history": []},
                            {"X-API-Key": "s3cret"})
        assert text_of(browser, "intent-label") == intent["label"]
        assert browser.find_elements("css selector", "#transcript li.agent") == []
        assert text_of(browser, "status") == ""
    finally:
        srv.stop()

