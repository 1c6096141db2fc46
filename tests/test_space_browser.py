"""End-to-end: the Space launched with its one command (``python space/app.py --port P``) and driven in a real
headless Chromium through Selenium: generate, see images in the gallery and the trajectory animation, see a
clear error for a bad request, and generate again after it.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``); skipped
when they are absent, a failure under CI (where .ci/run installs them). A screenshot is written to the test's tmp dir, and also to the path in
``HF_DDM_SPACE_SCREENSHOT`` when set (``HF_DDM_SPACE_SCREENSHOT=space/screenshot.png`` refreshes the README's).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.browser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMEDRIVER = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else shutil.which("chromedriver")
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)

if not (CHROMIUM and CHROMEDRIVER):
    why = "Chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI"):  # .ci/run installs them: a skip there would hide a broken install step
        pytest.fail(why, pytrace=False)
    pytest.skip(why, allow_module_level=True)

from selenium import webdriver  # noqa: E402  (a hard requirement once Chromium is there)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("space-browser")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_DDM_MODEL_")}
    env.update(HF_DDM_SPACE_DEMO_CACHE=str(tmp / "demo-cache"), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "space", "app.py"), "--port", str(port),
                             "--threads", "1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"app.py did not serve {url} in time:\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1400,1500"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()


def set_number(driver, elem_id: str, value: int):
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def gallery_images(driver):
    return [i for i in driver.find_elements(By.CSS_SELECTOR, "#gallery img") if i.get_attribute("src")]


def wait_for_run(driver, timeout=120):
    """Wait until a new run-info text appears; return it."""
    WebDriverWait(driver, timeout).until(
        lambda d: "model evaluations" in d.find_element(By.ID, "run-info").text)
    return driver.find_element(By.ID, "run-info").text


def test_generate_in_the_browser(server, driver, tmp_path):
    driver.get(server)
    wait = WebDriverWait(driver, 60)
    button = wait.until(EC.element_to_be_clickable((By.ID, "generate-btn")))
    assert "untrained demo weights" in driver.find_element(By.TAG_NAME, "body").text.lower() or \
        "trained checkpoint" in driver.find_element(By.ID, "model-status").text
    set_number(driver, "steps", 4)
    set_number(driver, "num-images", 4)
    driver.find_element(By.CSS_SELECTOR, "#animation-accordion button").click()
    wait.until(EC.element_to_be_clickable((By.XPATH, "//*[@id='animation']//label[contains(., 'x0-prediction')]")))
    driver.find_element(By.XPATH, "//*[@id='animation']//label[contains(., 'x0-prediction')]").click()

    button.click()
    info = wait_for_run(driver)
    WebDriverWait(driver, 30).until(lambda d: len(gallery_images(d)) >= 4)
    assert "4 images" in info and "4 steps requested" in info
    WebDriverWait(driver, 30).until(
        lambda d: any(".gif" in (i.get_attribute("src") or "") for i in d.find_elements(By.CSS_SELECTOR, "#trajectory img")))
    # Every gallery image actually decodes in the browser (on a loaded machine decoding can trail the DOM).
    decoded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    WebDriverWait(driver, 30).until(lambda d: all(d.execute_script(decoded, img) for img in gallery_images(d)))

    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    driver.save_screenshot(str(tmp_path / "space.png"))
    assert (tmp_path / "space.png").stat().st_size > 10_000
    target = os.environ.get("HF_DDM_SPACE_SCREENSHOT")
    if target:
        shutil.copyfile(tmp_path / "space.png", target)


def test_one_progress_bar_over_the_gallery_while_generating(server, driver):
    """The progress of a generation shows once, over the gallery: not a second time over the run info, and
    not over the trajectory box (which, with the animation off, it used to cover)."""
    driver.get(server)
    wait = WebDriverWait(driver, 60)
    button = wait.until(EC.element_to_be_clickable((By.ID, "generate-btn")))
    set_number(driver, "steps", 400)
    set_number(driver, "num-images", 8)
    count = ("return Array.from(document.querySelectorAll('.progress-text, .eta-bar, .progress-level'))"
             ".filter(e => e.offsetParent !== null).map(e => (e.closest('[id]') || {}).id || '')")
    button.click()
    seen, deadline = [], time.time() + 120
    while time.time() < deadline and "model evaluations" not in driver.find_element(By.ID, "run-info").text:
        seen.append(driver.execute_script(count))
        time.sleep(0.05)
    shown = [s for s in seen if s]
    assert shown, "no progress was shown during a 400-step generation"
    hosts = {h for s in shown for h in s}
    assert "trajectory" not in hosts and "run-info" not in hosts, hosts
    assert hosts <= {"gallery"}, hosts


def test_bad_request_shows_an_error_and_the_app_keeps_working(server, driver, tmp_path):
    driver.get(server)
    wait = WebDriverWait(driver, 60)
    wait.until(EC.element_to_be_clickable((By.ID, "generate-btn")))
    # Switch to the text-conditional model: the prompt box appears.
    model_input = driver.find_element(By.CSS_SELECTOR, "#model input")
    model_input.click()
    wait.until(EC.element_to_be_clickable((By.XPATH, "//ul//li[contains(., 'text-conditional')]"))).click()
    prompt = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#prompt textarea, #prompt input")))
    WebDriverWait(driver, 30).until(lambda d: prompt.get_attribute("value"))  # the suggested prompt arrived
    set_number(driver, "steps", 2)
    set_number(driver, "num-images", 1)
    prompt.send_keys(Keys.CONTROL, "a")
    prompt.send_keys(Keys.DELETE)
    driver.find_element(By.ID, "generate-btn").click()
    # The error is shown to this user ...
    WebDriverWait(driver, 60).until(lambda d: "enter a prompt" in d.find_element(By.TAG_NAME, "body").text)
    # ... and the next request is served.
    prompt.send_keys("a photo of a bag")
    driver.find_element(By.ID, "generate-btn").click()
    info = wait_for_run(driver)
    assert "text-conditional" in info
    WebDriverWait(driver, 30).until(lambda d: len(gallery_images(d)) >= 1)
    driver.save_screenshot(str(tmp_path / "space-text.png"))


def test_compare_samplers_side_by_side_in_the_browser(server, driver, tmp_path):
    """Compare mode: the default pair of samplers on one seed, one grid per sampler, each captioned with its
    model evaluations and wall time; the screenshot (``HF_DDM_SPACE_COMPARE_SCREENSHOT``) is the README's."""
    driver.get(server)
    wait = WebDriverWait(driver, 60)
    wait.until(EC.element_to_be_clickable((By.ID, "generate-btn")))
    set_number(driver, "steps", 6)
    set_number(driver, "num-images", 4)
    driver.find_element(By.CSS_SELECTOR, "#compare-accordion button").click()
    button = wait.until(EC.element_to_be_clickable((By.ID, "compare-btn")))
    chosen = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#compare-samplers .token")]
    assert len(chosen) >= 2, chosen  # the model's default comparison is preselected
    button.click()
    WebDriverWait(driver, 240).until(lambda d: "samplers" in d.find_element(By.ID, "compare-info").text)
    info = driver.find_element(By.ID, "compare-info").text
    assert f"{len(chosen)} samplers" in info and "6 steps requested" in info
    grids = lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, "#compare-gallery img") if i.get_attribute("src")]  # noqa
    WebDriverWait(driver, 30).until(lambda d: len(grids(d)) >= len(chosen))
    for img in grids(driver):
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
    captions = driver.find_element(By.ID, "compare-gallery").text
    assert captions.count("NFE") >= len(chosen) and " s" in captions
    # Nothing shown carries a path of the machine that serves it.
    assert ROOT not in driver.find_element(By.TAG_NAME, "body").text
    driver.execute_script("document.getElementById('compare-gallery').scrollIntoView({block: 'center'})")
    time.sleep(0.5)
    driver.save_screenshot(str(tmp_path / "compare.png"))
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    target = os.environ.get("HF_DDM_SPACE_COMPARE_SCREENSHOT")
    if target:
        shutil.copyfile(tmp_path / "compare.png", target)
