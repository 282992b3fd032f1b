"""The dashboard in headless Chromium against a real ``backvault server`` process.

The server runs with the API, one worker and the Prometheus listener; a backup started through the
API completes; then a browser signs in through the form, sees the overview's charts, finds the
completed job and its recovery point, and signs out. Chromium and chromedriver come from Debian's
packages (scripts/ensure-chromium.sh); Selenium is told where they are, so it downloads nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e_helpers import REGION, ApiServer, free_port, server_process, wait_for
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from backvault.control.catalog import open_catalog
from backvault.control.context import ServiceContext
from backvault.control.discovery import discover_endpoint
from backvault.control.endpoints import register_source_endpoint
from backvault.control.identity import bootstrap_admin
from backvault.control.locations import ensure_default_location
from backvault.control.secrets import load_master_secret
from backvault.control.vaults import create_backup_vault

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"
PHOTOS = "arn:aws:backvault:local:000000000000:filesystem:files/photos"
METRICS_TOKEN = "e2e-metrics-token-5f0c1a9d7b3e4f21"


@dataclass
class ServerProcess:
    """A running ``backvault server``: its API, its metrics listener, the admin's key and its log."""

    api: ApiServer
    metrics_url: str
    log: Path
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Install Debian's chromium and chromium-driver when they are missing; return chromium's path."""
    installed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-chromium.sh")], capture_output=True, text=True, timeout=900
    )
    if installed.returncode != 0:
        pytest.fail(f"scripts/ensure-chromium.sh failed:\n{installed.stderr[-3000:]}", pytrace=False)
    return installed.stdout.strip()


@pytest.fixture
def browser(chromium: str) -> Iterator[WebDriver]:
    """A headless Chromium driven through Debian's chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """``backvault server`` with --listen and --metrics-listen over a catalog with a vault and a resource."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    photos = tmp_path / "files" / "photos"
    photos.mkdir(parents=True)
    (photos / "cat.jpg").write_bytes(os.urandom(40_000))
    catalog = open_catalog(None, data_dir)
    try:
        context = ServiceContext(catalog=catalog, master_secret=load_master_secret(data_dir))
        ensure_default_location(context, data_dir / "vaults")
        create_backup_vault(context, "main")
        register_source_endpoint(context, "files", "Filesystem", {"root": str(photos.parent)})
        discover_endpoint(context, "files")
        created, key = bootstrap_admin(context)
        assert created and key is not None
    finally:
        catalog.dispose()
    token_file = tmp_path / "metrics.token"
    token_file.write_text(METRICS_TOKEN + "\n")
    token_file.chmod(0o600)
    metrics_port = free_port()
    environment = {
        **os.environ,
        "BACKVAULT_TEST_FAST_KDF": "1",
        "BACKVAULT_CACHE_DIR": str(tmp_path / "cache"),
    }
    log = tmp_path / "server.log"
    options = ("--metrics-listen", f"127.0.0.1:{metrics_port}", "--metrics-token-file", str(token_file))
    with server_process(data_dir, log, environment, *options) as (process, url):
        catalog = open_catalog(None, data_dir)
        try:
            context = ServiceContext(catalog=catalog, master_secret=load_master_secret(data_dir))
            api = ApiServer(url, context, data_dir, key["AccessKeyId"], key["SecretAccessKey"])
            yield ServerProcess(api, f"http://127.0.0.1:{metrics_port}/metrics", log, process)
        finally:
            catalog.dispose()


def test_sign_in_see_charts_find_the_job_and_point_then_sign_out(
    server: ServerProcess, browser: WebDriver
) -> None:
    client = server.api.client()
    started = client.start_backup_job(BackupVaultName="main", ResourceArn=PHOTOS, IamRoleArn=ROLE)
    job_id, point_arn = started["BackupJobId"], started["RecoveryPointArn"]

    def finished() -> str | None:
        state = str(client.describe_backup_job(BackupJobId=job_id)["State"])
        return state if state in ("COMPLETED", "FAILED", "ABORTED", "EXPIRED") else None

    assert wait_for("the backup job", finished, server.process, server.log) == "COMPLETED"

    base = f"{server.api.endpoint_url}/backvault/dashboard"
    wait = WebDriverWait(browser, 10)
    browser.get(f"{base}/")
    wait.until(expected_conditions.url_to_be(f"{base}/login"))
    browser.find_element(By.ID, "access_key_id").send_keys(server.api.access_key_id)
    browser.find_element(By.ID, "secret_access_key").send_keys(server.api.secret_access_key)
    browser.find_element(By.ID, "sign-in").click()
    wait.until(expected_conditions.url_to_be(f"{base}/"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    charts = browser.find_elements(By.CSS_SELECTOR, "figure svg.chart")
    assert len(charts) == 2
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-jobs svg rect.state-completed")
    assert browser.find_element(By.ID, "count-recovery-points").text == "1"
    assert browser.find_element(By.ID, "count-protected").text == "1"
    assert f"region {REGION}" in browser.find_element(By.CSS_SELECTOR, "header .who").text

    browser.find_element(By.LINK_TEXT, "Jobs").click()
    wait.until(expected_conditions.url_to_be(f"{base}/jobs"))
    row = browser.find_element(By.CSS_SELECTOR, f'tr.job[data-job-id="{job_id}"]')
    assert row.get_attribute("data-state") == "COMPLETED"
    assert "COMPLETED" in row.text and "photos" in row.text and "main" in row.text

    browser.find_element(By.LINK_TEXT, "Recovery points").click()
    wait.until(expected_conditions.url_to_be(f"{base}/recovery-points"))
    point = browser.find_element(By.CSS_SELECTOR, f'tr.point[data-arn="{point_arn}"]')
    assert point_arn in point.text and "COMPLETED" in point.text

    # The cookie is HttpOnly: scripts on the page cannot read it.
    assert browser.execute_script("return document.cookie") == ""
    browser.find_element(By.ID, "logout").click()
    wait.until(expected_conditions.url_to_be(f"{base}/login"))
    browser.get(f"{base}/jobs")
    wait.until(expected_conditions.url_to_be(f"{base}/login"))

    # Prometheus' listener on the same server: the token is required, and it never reaches the log.
    assert httpx.get(server.metrics_url).status_code == 401
    scraped = httpx.get(server.metrics_url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status_code == 200
    assert 'backvault_jobs{state="COMPLETED",type="BACKUP"} 1.0' in scraped.text
    log = server.log.read_text()
    assert METRICS_TOKEN not in log and server.api.secret_access_key not in log
    started_record = next(
        json.loads(line)
        for line in log.splitlines()
        if "backvault server started" in line and line.startswith("{")
    )
    assert started_record["metrics"] == server.metrics_url
