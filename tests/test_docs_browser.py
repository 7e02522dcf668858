"""The built site in a real browser: headless Debian Chromium driven by Selenium through chromium-driver.

Not selected by default (``addopts = -m "not browser"``): run with ``pytest -m browser``. `.ci/run` installs
Chromium and runs them. When Chromium or its driver is missing the tests fail with the install command.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
from docs_helpers import REPO_ROOT, build_site, nav_pages, page_url

pytestmark = pytest.mark.browser

ARTIFACTS = REPO_ROOT / "test-artifacts"
INSTALL_HINT = "install them with `apt-get install chromium chromium-driver` (Debian/Ubuntu), as .ci/run does"
WAIT_S = 30
PRIMARY_NAV_LINKS = "nav.md-nav--primary a.md-nav__link[href]"


def _executable(*names: str) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def site_url(tmp_path_factory) -> Iterator[str]:
    """The site built with ``mkdocs build --strict``, served by ``http.server`` on 127.0.0.1 (a free port)."""
    site_dir = tmp_path_factory.mktemp("site")
    result = build_site(site_dir)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system packages (no driver or browser download)."""
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("selenium is not installed; install the docs extra: pip install -e '.[docs]'")
    chromium = _executable("chromium", "chromium-browser", "google-chrome")
    driver_path = _executable("chromedriver")
    if chromium is None or driver_path is None:
        missing = " and ".join(name for name, path in (("chromium", chromium), ("chromedriver", driver_path)) if not path)
        pytest.fail(f"{missing} not found on PATH; {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


def _wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message)


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_home_page_renders(browser, site_url):
    from selenium.webdriver.common.by import By

    browser.get(site_url)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article h1"), "the home page has no heading")
    assert "vit-zoo" in browser.title
    article = browser.find_element(By.CSS_SELECTOR, "article").text
    assert "Quickstart" in article
    assert "python3 -m venv .venv" in article and "python -m pytest" in article
    assert 'pip install "vit-zoo @ git+https://github.com/vit-zoo/vit-zoo"' in article
    repository = browser.find_element(By.CSS_SELECTOR, "a.md-source")
    assert repository.get_attribute("href") == "https://github.com/vit-zoo/vit-zoo"
    path = _screenshot(browser, "docs-home.png")
    assert path.stat().st_size > 10_000


def test_navigation_reaches_every_page(browser, site_url):
    from selenium.webdriver.common.by import By

    browser.get(site_url)
    # Waited for, not read at once: in CI a reload of the page the previous test left open once returned no links.
    links = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, PRIMARY_NAV_LINKS), "the page has no navigation")
    hrefs = {link.get_attribute("href").split("#")[0] for link in links}
    hrefs = {href for href in hrefs if urlparse(href).netloc == urlparse(site_url).netloc}
    assert hrefs == {urljoin(site_url, page_url(page)) for page in nav_pages()}
    for href in sorted(hrefs):
        browser.get(href)
        heading = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article h1"), f"{href}: no page heading")
        assert "Error response" not in browser.title and "404" not in browser.title, f"{href}: {browser.title}"
        assert heading[0].text.strip(), f"{href}: empty heading"


def test_search_finds_trust_remote_code(browser, site_url):
    from selenium.webdriver.common.by import By

    browser.get(site_url)
    search = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    search.click()  # the header's search box (a 1280 px window shows it; narrower ones hide it behind an icon)
    search.send_keys("trust_remote_code")
    results = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "li.md-search-result__item"), "search found nothing")
    texts = " ".join(item.text for item in results)
    targets = {item.find_element(By.CSS_SELECTOR, "a").get_attribute("href") for item in results}
    assert "trust_remote_code" in texts
    assert any("/transformers/" in target for target in targets), targets
    _screenshot(browser, "docs-search.png")


# Pages whose tables hold long calls, messages or generated API tables: each is read at both widths.
TABLE_PAGES = (
    "timm.md",
    "hub.md",
    "transformers.md",
    "comparison.md",
    "contributing.md",
    "zoo.md",
    "reference/modeling.md",
    "reference/timm.md",
    "reference/config.md",
)
WIDTHS = {"desktop": 1400, "phone": 390}
CLIPPED_CELLS = """
return Array.from(document.querySelectorAll("article td, article th"))
  .filter(cell => cell.scrollWidth > cell.clientWidth + 1)
  .map(cell => cell.textContent.trim().slice(0, 80));
"""


@pytest.fixture(params=sorted(WIDTHS))
def width(request, browser) -> Iterator[str]:
    browser.set_window_size(WIDTHS[request.param], 900)
    yield request.param
    browser.set_window_size(1280, 900)


@pytest.mark.parametrize("page", TABLE_PAGES)
def test_no_table_cell_is_clipped(browser, site_url, page, width):
    from selenium.webdriver.common.by import By

    browser.get(urljoin(site_url, page_url(page)))
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article h1"), f"{page}: no heading")
    assert browser.find_elements(By.CSS_SELECTOR, "article table"), f"{page} has no table to check"
    clipped = browser.execute_script(CLIPPED_CELLS)
    assert not clipped, f"{page} at {WIDTHS[width]} px cuts off the cells {clipped}"
    _screenshot_full_page(browser, f"docs-{page.replace('/', '-').removesuffix('.md')}-{WIDTHS[width]}.png")


def test_contributing_page_names_the_markers_without_expanding_them(browser, site_url):
    from selenium.webdriver.common.by import By

    browser.get(urljoin(site_url, page_url("contributing.md")))
    article = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article"), "no article")[0]
    for marker in ("zoo-table", "cli-reference", "benchmark-results"):
        assert f"<!-- vit-zoo:{marker} -->" in article.text
    headers = [th.text for th in article.find_elements(By.CSS_SELECTOR, "th")]
    assert "Resolution" not in headers and "usage: vit-zoo" not in article.text, "a generated table landed here"
    assert "Weight sources" not in article.text
    bullets = article.find_elements(By.XPATH, ".//li[starts-with(normalize-space(.), 'Generated content.')]")
    assert bullets and len(bullets[0].text) < 600, "the generated-content bullet swallowed the rest of the page"


def test_config_reference_shows_types_and_defaults(browser, site_url):
    from selenium.webdriver.common.by import By

    browser.get(urljoin(site_url, page_url("reference/config.md")))
    article = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article"), "no article")[0]
    rows = {}
    for row in article.find_elements(By.CSS_SELECTOR, "table tr"):
        cells = [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")]
        if cells:
            rows[cells[0]] = cells
    for name, default in (("input_resolution", "224"), ("patch_size", "32"), ("activation", "'quick_gelu'")):
        assert name in rows, f"{name} is not in the parameter table: {sorted(rows)}"
        assert "required" not in rows[name][-1] and default in rows[name][-1], rows[name]
        assert rows[name][1].strip(), f"{name} has no type"
    assert "VitZooConfig(" in article.find_element(By.CSS_SELECTOR, ".doc-signature").text


def _screenshot_full_page(driver, name: str) -> Path:
    """The whole page at the window's width: the window grows to the document's height for the shot."""
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(height, 8000))
    try:
        return _screenshot(driver, name)
    finally:
        driver.set_window_size(width, 900)
