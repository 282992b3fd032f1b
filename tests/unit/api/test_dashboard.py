"""The web dashboard over a real catalog (SQLite and PostgreSQL), served by uvicorn and driven with httpx.

Sessions (login, cookie flags, forged/expired cookies, revoked keys), authorization per page, the
same-origin guard on form posts, the login throttle, and every page rendered over real data: a
backup run by a worker into a vault, a failed job, a framework, a restore test, and a resource whose
name and tags are hostile HTML.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_helpers import ROLE, FakeClock

from backvault.api.app import create_app
from backvault.api.dashboard.session import COOKIE_NAME, SessionSigner
from backvault.api.serving import serving
from backvault.control import identity
from backvault.control.backup_jobs import start_backup_job
from backvault.control.catalog import ProtectedResource
from backvault.control.catalog.restore_testing_models import RestoreTest
from backvault.control.context import ServiceContext
from backvault.control.discovery import discover_endpoint
from backvault.control.endpoints import register_source_endpoint
from backvault.control.frameworks import create_framework
from backvault.control.job_handlers import HANDLERS
from backvault.control.vaults import create_backup_vault
from backvault.control.worker import Worker

BASE = "/backvault/dashboard"
READER = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "backup:List*", "Resource": "*"}],
}
NO_BACKUP_JOBS = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Deny", "Action": "backup:ListBackupJobs", "Resource": "*"}],
}
PHOTOS = "arn:aws:backvault:local:000000000000:filesystem:files/photos"
HOSTILE_ARN = "arn:aws:backvault:local:000000000000:filesystem:files/hostile"
HOSTILE_NAME = '<script>alert("name")</script>'
HOSTILE_TAG = "<script>alert('tag')</script>"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the filesystem backup cache out of the home directory."""
    monkeypatch.setenv("BACKVAULT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def server(context: ServiceContext) -> Iterator[str]:
    """Serve create_app(context) with uvicorn on a free 127.0.0.1 port; yield its URL."""
    with serving(create_app(context)) as url:
        yield url


@pytest.fixture
def browser(server: str) -> Iterator[httpx.Client]:
    """An HTTP client with a cookie jar, not following redirects (the tests look at them)."""
    with httpx.Client(base_url=server, follow_redirects=False, timeout=30) as client:
        yield client


@pytest.fixture
def admin_key(context: ServiceContext) -> dict[str, Any]:
    """The bootstrap admin's key (with its secret)."""
    created, key = identity.bootstrap_admin(context)
    assert created and key is not None
    return key


def user_with_key(context: ServiceContext, name: str, *documents: dict[str, Any]) -> dict[str, Any]:
    """Create a user with inline policies and one key; return the key (with its secret)."""
    identity.create_user(context, name)
    for index, document in enumerate(documents):
        identity.put_user_policy(context, name, f"policy{index}", document)
    key: dict[str, Any] = identity.create_access_key(context, name)["AccessKey"]
    return key


def log_in(browser: httpx.Client, key: dict[str, Any], secret: str | None = None) -> httpx.Response:
    """Post the login form as the dashboard's own page would."""
    return browser.post(
        f"{BASE}/login",
        data={"access_key_id": key["AccessKeyId"], "secret_access_key": secret or key["SecretAccessKey"]},
        headers={"Origin": str(browser.base_url).rstrip("/")},
    )


def assert_sent_to_login(response: httpx.Response) -> None:
    """The request was not served: the answer is the redirect to the login page."""
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{BASE}/login"


# --- sessions ------------------------------------------------------------------------------------


def test_login_sets_a_strict_http_only_session_cookie(
    browser: httpx.Client, admin_key: dict[str, Any], context: ServiceContext
) -> None:
    assert_sent_to_login(browser.get(f"{BASE}/"))
    page = browser.get(f"{BASE}/login")
    assert page.status_code == 200 and 'name="secret_access_key"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]

    answer = log_in(browser, admin_key)
    assert answer.status_code == 303 and answer.headers["location"] == f"{BASE}/"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == f"Path={BASE}"
    assert attributes["max-age"] == "Max-Age=28800"
    value = browser.cookies[COOKIE_NAME]
    assert admin_key["SecretAccessKey"] not in cookie and value.startswith(f"v1.{admin_key['AccessKeyId']}.")

    overview = browser.get(f"{BASE}/")
    assert overview.status_code == 200
    assert (
        "admin" in overview.text
        and "account 000000000000" in overview.text
        and "region local" in overview.text
    )
    assert overview.headers["cache-control"] == "no-store"
    keys = identity.list_access_keys(context, "admin")["AccessKeyMetadata"]
    assert keys[0]["LastUsedDate"] == context.now()  # a dashboard login is a use of the key
    assert browser.get(BASE).headers["location"] == f"{BASE}/"


def test_a_wrong_secret_or_key_gets_401_and_reveals_nothing(
    browser: httpx.Client, admin_key: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "W" + admin_key["SecretAccessKey"][1:]
    with caplog.at_level(logging.DEBUG):
        refused = log_in(browser, admin_key, secret=wrong)
        unknown = log_in(browser, {"AccessKeyId": "BVKNOTAKEY0000000000", "SecretAccessKey": wrong})
    for answer in (refused, unknown):
        assert answer.status_code == 401
        assert "Invalid access key or secret" in answer.text
        assert "set-cookie" not in answer.headers
        for secret in (wrong, admin_key["SecretAccessKey"]):
            assert secret not in answer.text
    # The same page whether the key exists or not: nothing tells a valid key id apart.
    assert refused.text == unknown.text
    assert admin_key["AccessKeyId"] not in refused.text
    for secret in (wrong, admin_key["SecretAccessKey"]):
        assert secret not in caplog.text
    assert "dashboard login refused" in caplog.text


def test_forged_tampered_foreign_and_expired_cookies_are_refused(
    browser: httpx.Client, admin_key: dict[str, Any], context: ServiceContext, clock: FakeClock
) -> None:
    reader = user_with_key(context, "reader", READER)
    assert log_in(browser, reader).status_code == 303
    good = browser.cookies[COOKIE_NAME]
    version, key_id, expiry, signature = good.split(".")
    forged = {
        "garbage": "not-a-token",
        "bad signature": f"{version}.{key_id}.{expiry}.{'A' * len(signature)}",
        "other key": f"{version}.{admin_key['AccessKeyId']}.{expiry}.{signature}",
        "longer life": f"{version}.{key_id}.{int(expiry) + 86400}.{signature}",
        "another server": SessionSigner().issue(admin_key["AccessKeyId"], context.now()),
    }
    for name, value in forged.items():
        answer = httpx.get(f"{browser.base_url}{BASE}/jobs", cookies={COOKIE_NAME: value})
        assert answer.status_code == 303, name
        assert answer.headers["location"] == f"{BASE}/login", name
        assert COOKIE_NAME in answer.headers.get("set-cookie", ""), name  # the bad cookie is cleared
    assert browser.get(f"{BASE}/jobs").status_code == 200

    clock.advance(timedelta(hours=8, seconds=1))
    assert_sent_to_login(browser.get(f"{BASE}/jobs"))


def test_a_deactivated_or_deleted_key_ends_its_session(
    browser: httpx.Client, context: ServiceContext
) -> None:
    key = user_with_key(context, "alice", READER)
    assert log_in(browser, key).status_code == 303
    assert browser.get(f"{BASE}/jobs").status_code == 200
    identity.update_access_key(context, key["AccessKeyId"], "Inactive")
    cookie = browser.cookies[COOKIE_NAME]
    assert_sent_to_login(browser.get(f"{BASE}/jobs"))
    identity.update_access_key(context, key["AccessKeyId"], "Active")
    assert httpx.get(f"{browser.base_url}{BASE}/jobs", cookies={COOKIE_NAME: cookie}).status_code == 200
    identity.delete_access_key(context, key["AccessKeyId"])
    assert_sent_to_login(httpx.get(f"{browser.base_url}{BASE}/jobs", cookies={COOKIE_NAME: cookie}))
    # A deleted key cannot sign in again either.
    assert log_in(browser, key).status_code == 401


def test_logout_clears_the_session(browser: httpx.Client, admin_key: dict[str, Any]) -> None:
    log_in(browser, admin_key)
    cookie = browser.cookies[COOKIE_NAME]
    answer = browser.post(f"{BASE}/logout", headers={"Origin": str(browser.base_url).rstrip("/")})
    assert answer.status_code == 303 and answer.headers["location"] == f"{BASE}/login"
    assert f'{COOKIE_NAME}=""' in answer.headers["set-cookie"] or "Max-Age=0" in answer.headers["set-cookie"]
    assert COOKIE_NAME not in browser.cookies
    assert_sent_to_login(browser.get(f"{BASE}/"))
    assert cookie  # (the token itself stays valid until it expires: sessions are stateless)


# --- cross-site posts and throttling -------------------------------------------------------------


def test_cross_site_posts_are_refused(browser: httpx.Client, admin_key: dict[str, Any]) -> None:
    form = {"access_key_id": admin_key["AccessKeyId"], "secret_access_key": admin_key["SecretAccessKey"]}
    own = str(browser.base_url).rstrip("/")
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/x"},
        {},
    ):
        answer = browser.post(f"{BASE}/login", data=form, headers=headers)
        assert answer.status_code == 403, headers
        assert "Cross-site form posts are refused" in answer.text
        assert "set-cookie" not in answer.headers
    assert (
        browser.post(f"{BASE}/login", data=form, headers={"Referer": f"{own}{BASE}/login"}).status_code == 303
    )
    # A cross-site logout does not end the session.
    assert browser.post(f"{BASE}/logout", headers={"Origin": "http://evil.example"}).status_code == 403
    assert browser.get(f"{BASE}/").status_code == 200


def test_failed_logins_are_throttled(browser: httpx.Client, admin_key: dict[str, Any]) -> None:
    statuses = [log_in(browser, admin_key, secret=f"wrong-{attempt}").status_code for attempt in range(14)]
    assert statuses[:10] == [401] * 10
    assert 429 in statuses[10:]
    throttled = log_in(browser, admin_key, secret="wrong-again")
    assert throttled.status_code == 429 and "Too many login attempts" in throttled.text


# --- authorization -------------------------------------------------------------------------------


def test_a_denied_action_gets_a_403_page_naming_it(browser: httpx.Client, context: ServiceContext) -> None:
    create_backup_vault(context, "main")
    key = user_with_key(context, "auditor", READER, NO_BACKUP_JOBS)
    log_in(browser, key)
    refused = browser.get(f"{BASE}/jobs")
    assert refused.status_code == 403
    assert "backup:ListBackupJobs" in refused.text and 'id="jobs"' not in refused.text
    assert browser.get(f"{BASE}/jobs?type=BACKUP&state=COMPLETED").status_code == 403
    assert browser.get(f"{BASE}/jobs?type=COPY").status_code == 200
    overview = browser.get(f"{BASE}/")
    assert overview.status_code == 200
    assert "Not shown: you are not authorized to perform <code>backup:ListBackupJobs</code>" in overview.text
    assert 'id="chart-jobs"' not in overview.text and 'id="chart-bytes"' in overview.text
    # A user with no policy at all sees nothing.
    nobody = user_with_key(context, "nobody")
    browser.cookies.clear()
    log_in(browser, nobody)
    for path in ("/", "/resources", "/jobs", "/recovery-points", "/compliance", "/restore-tests"):
        assert browser.get(BASE + path).status_code == 403, path


def test_unknown_paths_and_filters(browser: httpx.Client, admin_key: dict[str, Any]) -> None:
    log_in(browser, admin_key)
    assert browser.get(f"{BASE}/nothing-here").status_code == 404
    bad = browser.get(f"{BASE}/jobs?state=<b>DONE</b>")
    assert bad.status_code == 400 and "<B>" not in bad.text and "&lt;B&gt;DONE&lt;/B&gt;" in bad.text
    assert browser.get(f"{BASE}/recovery-points?vault=missing").status_code == 400
    stuffed = browser.post(
        f"{BASE}/login",
        content="&".join(f"f{n}=x" for n in range(20)),
        headers={"Origin": str(browser.base_url)},
    )
    assert stuffed.status_code == 400 and "set-cookie" not in stuffed.headers
    style = browser.get(f"{BASE}/static/dashboard.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")


# --- pages over real data ------------------------------------------------------------------------


@pytest.fixture
def populated(context: ServiceContext, tmp_path: Path, clock: FakeClock) -> dict[str, str]:
    """A vault with a completed backup, a failed backup, a framework, a restore test, a hostile resource."""
    root = tmp_path / "files"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "cat.jpg").write_bytes(bytes(range(256)) * 400)
    (root / "photos" / ".backvault-tags").write_text("backup=daily\n")
    (root / "gone").mkdir()
    create_backup_vault(context, "main")
    register_source_endpoint(context, "files", "Filesystem", {"root": str(root)})
    discover_endpoint(context, "files")
    worker = Worker(context, worker_id="test-worker", handlers=HANDLERS)
    done = start_backup_job(context, "main", PHOTOS, ROLE)
    assert worker.run_once()
    shutil.rmtree(root / "gone")
    failed = start_backup_job(
        context, "main", "arn:aws:backvault:local:000000000000:filesystem:files/gone", ROLE
    )
    clock.advance(timedelta(minutes=1))
    assert worker.run_once()
    create_framework(context, "Daily_Audit", [{"ControlName": "BACKUP_RESOURCES_PROTECTED_BY_BACKUP_PLAN"}])
    with context.catalog.transaction() as session:
        session.add(
            ProtectedResource(
                arn=HOSTILE_ARN,
                resource_type="Filesystem",
                endpoint_name="files",
                resource_name=HOSTILE_NAME,
                native_tags={"owner": HOSTILE_TAG},
                creation_date=context.now(),
                last_seen_date=context.now(),
            )
        )
        session.add(
            RestoreTest(
                id=str(uuid.uuid4()),
                plan_id="plan-1",
                plan_name="weekly_check",
                plan_arn="arn:aws:backup:local:000000000000:restore-testing-plan:weekly_check-1",
                selection_name="photos",
                scheduled_time=context.now(),
                resource_arn=PHOTOS,
                resource_type="Filesystem",
                recovery_point_arn=done["RecoveryPointArn"],
                state="COMPLETED",
                validation_status="SUCCESSFUL",
                validation_message="checksums match",
                deletion_status="SUCCESSFUL",
                restore_seconds=3.5,
                creation_time=context.now(),
                completion_time=context.now(),
            )
        )
    return {
        "done": done["BackupJobId"],
        "point": done["RecoveryPointArn"],
        "failed": failed["BackupJobId"],
    }


def test_every_page_renders_the_catalog(
    browser: httpx.Client, admin_key: dict[str, Any], populated: dict[str, str]
) -> None:
    log_in(browser, admin_key)
    overview = browser.get(f"{BASE}/")
    assert overview.status_code == 200
    assert overview.text.count("<svg") == 2 and 'class="state-completed"' in overview.text
    assert 'id="count-protected">1<' in overview.text and 'id="count-recovery-points">1<' in overview.text
    assert 'id="count-unprotected">2<' in overview.text  # the hostile resource and the vanished one
    assert 'id="failures"' in overview.text and "files/gone" in overview.text

    jobs = browser.get(f"{BASE}/jobs").text
    assert f'data-job-id="{populated["done"]}" data-job-type="BACKUP" data-state="COMPLETED"' in jobs
    assert f'data-job-id="{populated["failed"]}" data-job-type="BACKUP" data-state="FAILED"' in jobs
    failed_only = browser.get(f"{BASE}/jobs?state=failed").text
    assert populated["failed"] in failed_only and populated["done"] not in failed_only
    copies = browser.get(f"{BASE}/jobs?type=COPY").text
    assert populated["done"] not in copies and 'id="no-jobs"' in copies

    points = browser.get(f"{BASE}/recovery-points").text
    assert f'data-arn="{populated["point"]}"' in points and "COMPLETED" in points
    assert populated["point"] in browser.get(f"{BASE}/recovery-points?vault=main").text

    resources = browser.get(f"{BASE}/resources").text
    assert PHOTOS in resources and "backup=daily" in resources and "protected" in resources

    compliance = browser.get(f"{BASE}/compliance").text
    assert "Daily_Audit" in compliance and "BACKUP_RESOURCES_PROTECTED_BY_BACKUP_PLAN" in compliance
    assert "NON_COMPLIANT" in compliance and HOSTILE_ARN in compliance

    tests = browser.get(f"{BASE}/restore-tests").text
    assert "weekly_check" in tests and "checksums match" in tests and "3.5 s" in tests
    assert 'data-status="SUCCEEDED"' in tests


def test_hostile_names_and_tags_are_escaped(
    browser: httpx.Client, admin_key: dict[str, Any], populated: dict[str, str]
) -> None:
    log_in(browser, admin_key)
    for path in ("/", "/resources", "/compliance"):
        page = browser.get(BASE + path)
        assert page.status_code == 200
        assert "<script" not in page.text, path
    resources = browser.get(f"{BASE}/resources").text
    assert "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in resources
    assert "owner=&lt;script&gt;alert(&#39;tag&#39;)&lt;/script&gt;" in resources
