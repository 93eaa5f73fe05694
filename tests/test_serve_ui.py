"""`/ui`, the inspector page: in a real headless Chromium (Debian's `chromium` and `chromedriver`, driven by
Selenium), signing in with a tenant key, browsing, searching, a memory's history and a recent chat; and
over plain HTTP, that the page escapes what it shows and keeps tenants apart."""

import shutil

import httpx
import pytest

from serve_fixtures import running_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A keyed server with alice's and bob's memories, one updated, and a chat of alice's."""
    with running_server(tmp_path_factory.mktemp("ui"), default_max_tokens=4) as (url, keys):
        alice, _ = keys.create(user="alice")
        bob, _ = keys.create(user="bob")
        with httpx.Client(base_url=url, timeout=60) as http:

            def add(key: str, text: str) -> str:
                response = http.post("/v1/memories", json={"text": text}, headers={"X-Api-Key": key})
                return response.raise_for_status().json()["results"][0]["id"]

            bees = add(alice, "Alice keeps bees on the roof")
            http.put(
                f"/v1/memories/{bees}",
                json={"text": "Alice keeps three hives of bees"},
                headers={"X-Api-Key": alice},
            ).raise_for_status()
            add(alice, "<script>alert('x')</script> is not code here")
            add(bob, "Bob sails a small boat")
            chat = http.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny-qwen2",
                    "messages": [{"role": "user", "content": "what does Alice keep?"}],
                    "memory": {"retrieve": 1, "write": True},
                },
                headers={"Authorization": f"Bearer {alice}"},
            ).raise_for_status()
            yield url, {"alice": alice, "bob": bob}, bees, chat.json()["memory"]


def test_page_escapes_and_keeps_tenants_apart(keyed):
    url, keys, bees, _ = keyed
    with httpx.Client(base_url=url) as http:
        assert http.get("/ui").status_code == 401  # the sign-in form
        page = http.get("/ui", headers={"X-Api-Key": keys["alice"]}).text
        assert "Alice keeps three hives of bees" in page and "Bob sails" not in page
        assert "&lt;script&gt;" in page and "<script>" not in page
        other = http.get("/ui", params={"user": "bob"}, headers={"X-Api-Key": keys["alice"]})
        assert other.status_code == 403 and "Bob sails" not in other.text
        mine = http.get("/ui", params={"memory": bees}, headers={"X-Api-Key": keys["bob"]})
        assert mine.status_code == 404 and "Alice" not in mine.text


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)
def test_inspector_in_headless_chromium(keyed):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    url, keys, bees, chat = keyed
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:

        def find(element_id: str):
            # A click starts a navigation and returns: wait for the element of the page it leads to.
            return WebDriverWait(driver, 15).until(
                expected_conditions.presence_of_element_located((By.ID, element_id))
            )

        def sign_in(key: str) -> None:
            driver.get(f"{url}/ui")
            find("key").send_keys(key)
            find("login-submit").click()

        def text(element_id: str) -> str:
            return find(element_id).text

        sign_in(keys["alice"])
        assert "user alice" in text("caller")
        assert "Alice keeps three hives of bees" in text("memories")
        assert "Bob sails" not in driver.page_source
        # The chat's recalled memory, its write, and the question are on the page.
        chats = text("chats")
        assert "what does Alice keep?" in chats and chat["used"][0] in chats and chat["written"][0] in chats
        driver.find_element(By.ID, "q").send_keys("hives of bees")
        driver.find_element(By.ID, "go").click()
        assert "Alice keeps three hives of bees" in text("results")
        driver.find_element(By.LINK_TEXT, bees).click()
        assert "Alice keeps bees on the roof" in text("history")  # the version before the update
        driver.get(f"{url}/ui?user=bob")
        assert "another user" in text("error") and "Bob sails" not in driver.page_source

        find("logout").click()
        find("key")
        sign_in(keys["bob"])
        assert "Bob sails a small boat" in text("memories")
        assert "Alice" not in driver.page_source
    finally:
        driver.quit()
