"""The approver web page (GET /ui on the admin listener) in a real headless
Chromium, driven with Playwright, while boto3 clients wait on held requests.

Chromium is Debian's (/usr/bin/chromium, package `chromium`); Playwright's
own browser download is never used. A missing browser or Playwright fails
the run with an install hint: nothing is skipped.

The full-page screenshot of the page with pending requests is saved to
docs/approver-page.png (shown in the README).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import pytest
from harness import (
    ALICE,
    BOB,
    CAROL,
    DEMO_SECRET_IDS,
    PROD_API,
    PROD_DB,
    PY_TOOLS_HINT,
    REPO,
    SECRET_MARKERS,
    SECRETS,
    WORKLOAD_TOKEN,
    Keygate,
    client_error,
    error_of,
    expect_held,
    http_call,
)

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # reported by the `browser` fixture, as a failure
    sync_playwright = None

CHROMIUM = Path(os.environ.get("KEYGATE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_HINT = (
    "install Debian's Chromium with `apt-get install -y chromium chromium-driver` "
    "(the UI tests launch /usr/bin/chromium through Playwright; do not run `playwright install`)"
)
SCREENSHOT = REPO / "docs" / "approver-page.png"

# What the admin listener sends with the page (see src/admin.rs).
UI_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

TOKEN_KEY = "keygate.approverToken"  # sessionStorage key the page uses
UI_TIMEOUT_MS = 15_000  # the page refreshes at once on an event, or every 5 s without the stream
if sync_playwright is not None:
    expect.set_options(timeout=UI_TIMEOUT_MS)

JUSTIFY_DB = "INC-4711: payments DB failover check, paged by on-call"
JUSTIFY_API = "rotating the payments API key (CHG-2093)"
JUSTIFY_BULK = "nightly export for the DR drill"


# --------------------------------------------------------------------------
# Browser and page fixtures


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.fail(f"python package playwright is missing; {PY_TOOLS_HINT}", pytrace=False)
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found; {CHROMIUM_HINT}", pytrace=False)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Ui:
    """One browser tab on the approver page, with what went wrong in it."""

    def __init__(self, browser: Browser):
        self.context = browser.new_context(viewport={"width": 1180, "height": 900}, color_scheme="light")
        self.context.set_default_timeout(UI_TIMEOUT_MS)
        self.page: Page = self.context.new_page()
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.on("dialog", lambda d: (self.page_errors.append(f"unexpected dialog: {d.message}"), d.dismiss()))

    def _console(self, msg) -> None:
        # A 4xx answer to fetch() is logged as "Failed to load resource": expected
        # for refused tokens and reviews. Anything else (CSP violations, script
        # errors) is a failure.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.console_errors.append(msg.text)

    def close(self) -> None:
        self.context.close()

    def problems(self) -> list[str]:
        return self.page_errors + self.console_errors


@pytest.fixture
def ui(browser) -> Ui:
    tab = Ui(browser)
    yield tab
    problems = tab.problems()
    tab.close()
    assert not problems, f"the page logged errors: {problems}"


# --------------------------------------------------------------------------
# Helpers


def ui_origin(kg: Keygate) -> str:
    """Where the page is served: keygate's admin listener."""
    return kg.admin_url


def open_ui(page: Page, kg: Keygate) -> None:
    resp = page.goto(ui_origin(kg) + "/ui")
    assert resp is not None, "no response for GET /ui"
    assert resp.status == 200, f"GET /ui: HTTP {resp.status}: {resp.text()[:300]}"
    headers = resp.headers  # lower-cased names
    assert headers.get("content-type", "").startswith("text/html"), headers
    assert headers.get("content-security-policy") == UI_CSP, headers
    expect(page.get_by_test_id("signin-form")).to_be_visible()


def sign_in(page: Page, token: str) -> None:
    page.get_by_label("Approver token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def signed_in_as(page: Page, name: str) -> None:
    expect(page.get_by_test_id("app")).to_be_visible()
    expect(page.get_by_test_id("whoami-name")).to_have_text(name)


def session_token(page: Page) -> str | None:
    return page.evaluate(f"() => sessionStorage.getItem({TOKEN_KEY!r})")


def with_header(kg: Keygate, name: str, value: str, operation: str = "GetSecretValue", client=None):
    """A boto3 client that adds header `name` to `operation` (an event hook, as
    applications do it)."""
    client = client or kg.client()

    def add_header(request, **_):
        request.headers[name] = value

    client.meta.events.register(f"before-sign.secrets-manager.{operation}", add_header)
    return client


def justified(kg: Keygate, justification: str, operation: str = "GetSecretValue"):
    """A boto3 client that sends X-Keygate-Justification on `operation`."""
    return with_header(kg, "X-Keygate-Justification", justification, operation)


def restart_with_rule(kg: Keygate, rule: str, replace: dict[str, str] | None = None, add: str = "") -> Keygate:
    """Stop kg, change hold rule `rule` in its config (replace lines, add keys), start it again."""
    kg.stop()
    config = kg.config_path.read_text()
    head = f'[[policy.rules]]\nname = "{rule}"\n'
    start = config.index(head)
    end = config.find("[[", start + len(head))
    end = len(config) if end < 0 else end
    block = config[start:end]
    for old, new in (replace or {}).items():
        assert old in block, f"{old!r} not in rule {rule}: {block}"
        block = block.replace(old, new)
    block = block.rstrip("\n") + "\n" + add + "\n\n"
    kg.config_path.write_text(config[:start] + block + config[end:])
    return kg.start()


def pending_card(page: Page, text: str):
    return page.get_by_test_id("pending-list").get_by_test_id("pending-request").filter(has_text=text)


def card_by_id(page: Page, kind: str, request_id: str):
    return page.locator(f'[data-testid="{kind}-request"][data-request-id="{request_id}"]')


def no_secret_in(html: str) -> None:
    leaked = [m for m in SECRET_MARKERS if m in html]
    assert not leaked, f"secret values in the page: {leaked}"


def admin_error(kg: Keygate, request_id: str, token: str, action: str = "approve") -> dict:
    """What the API itself answers `token` for this review (it must refuse)."""
    body = {"comment": "probe"} if action == "approve" else {"reason": "probe"}
    resp = kg.admin.call("POST", f"/admin/v1/requests/{request_id}/{action}", body, token=token)
    assert resp.status == 403, f"expected 403, got {resp.status}: {resp.text[:300]}"
    return error_of(resp)


# --------------------------------------------------------------------------
# Tests


def test_ui_is_served_static_with_a_strict_csp(keygate):
    resp = http_call(keygate.admin_url, "GET", "/ui")  # no token needed for the page itself
    assert resp.status == 200, resp.text[:300]
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.headers["content-security-policy"] == UI_CSP
    page = (REPO / "src/admin/ui.html").read_text()
    assert resp.text == page, "GET /ui must serve src/admin/ui.html as it is"
    # self-contained: nothing fetched from anywhere else
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must not load external resources"
    assert "innerHTML" not in page and "eval(" not in page


def test_approver_approves_and_denies_from_the_page(start_keygate, ui, background):
    # a long hold window: the clients below wait while the page is driven
    kg = start_keygate(hold_window="45s")
    page = ui.page
    open_ui(page, kg)
    sign_in(page, ALICE)
    signed_in_as(page, "alice")
    expect(page.get_by_test_id("whoami")).to_contain_text("secops")
    assert session_token(page) == ALICE, "the token is kept in sessionStorage"
    expect(page.get_by_test_id("pending-empty")).to_be_visible()

    # 1. A held read shows up with its context; approving it releases the waiting client.
    waiting = background.submit(justified(kg, JUSTIFY_DB).get_secret_value, SecretId=PROD_DB)
    card = pending_card(page, JUSTIFY_DB)
    expect(card).to_have_count(1)
    assert not waiting.done(), "the held call must wait for the approval"
    request_id = card.get_attribute("data-request-id")
    [api_view] = [r for r in kg.admin.requests("pending") if r["id"] == request_id]
    assert api_view["justification"] == JUSTIFY_DB
    expect(card.get_by_test_id("request-identity")).to_have_text("demo-app")
    expect(card.get_by_test_id("request-operation")).to_have_text("GetSecretValue")
    expect(card.get_by_test_id("request-resources")).to_have_text(PROD_DB)
    expect(card.get_by_test_id("request-rule")).to_have_text("prod-read")
    expect(card.get_by_test_id("request-reasons")).to_contain_text(api_view["reasons"][0])
    expect(card.get_by_test_id("request-justification")).to_have_text(JUSTIFY_DB)
    expect(card.get_by_test_id("request-age")).to_have_text(re.compile(r"^(just now|\d+ s ago)$"))
    expect(card.get_by_test_id("approvals-progress")).to_have_text("0 of 1 approval (secops)")
    if api_view.get("client"):
        expect(card.get_by_test_id("request-client")).to_have_text(api_view["client"])

    card.get_by_label("Comment (required to deny)").fill("verified with on-call, INC-4711")
    card.get_by_role("button", name=re.compile("^Approve")).click()

    assert waiting.result(timeout=30)["SecretString"] == SECRETS[PROD_DB]
    expect(card).to_have_count(0)
    expect(page.get_by_test_id("flash")).to_contain_text("Approved demo-app: GetSecretValue prod/payments/db")
    approved = kg.admin.request(request_id)
    assert approved["state"] == "approved"
    assert [(a["approver"], a["comment"]) for a in approved["approvals"]] == [
        ("alice", "verified with on-call, INC-4711")
    ]
    decided = card_by_id(page, "decided", request_id)
    expect(decided.get_by_test_id("request-state")).to_have_text("approved")
    expect(decided.get_by_test_id("request-approvals")).to_contain_text("alice")
    expect(decided.get_by_test_id("request-approvals")).to_contain_text("verified with on-call, INC-4711")

    # A reload keeps the session (this tab's sessionStorage) and shows the grant's use.
    page.reload()
    signed_in_as(page, "alice")
    decided = card_by_id(page, "decided", request_id)
    expect(decided.get_by_test_id("grant-used-at").locator("li")).to_have_count(1)
    expect(decided.get_by_test_id("grant-uses-left")).to_have_text("0 uses left")

    # 2. Two more held requests at once: the screenshot for the README.
    waiting_api = background.submit(justified(kg, JUSTIFY_API).get_secret_value, SecretId=PROD_API)
    waiting_bulk = background.submit(
        justified(kg, JUSTIFY_BULK, "BatchGetSecretValue").batch_get_secret_value, SecretIdList=DEMO_SECRET_IDS
    )
    api_card = pending_card(page, JUSTIFY_API)
    bulk_card = pending_card(page, JUSTIFY_BULK)
    expect(api_card).to_have_count(1)
    expect(bulk_card).to_have_count(1)
    expect(bulk_card.get_by_test_id("request-resources").locator("li")).to_have_count(len(DEMO_SECRET_IDS))
    expect(bulk_card.get_by_test_id("request-rule")).to_have_text("bulk-export")
    expect(page.get_by_test_id("pending-count")).to_have_text("(2)")
    bulk_card.get_by_label("Comment (required to deny)").fill("no bulk exports during the freeze")
    bulk_card.get_by_label("Comment (required to deny)").blur()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    no_secret_in(page.content())

    # 3. Deny needs a reason; the client is shown it.
    api_id = api_card.get_attribute("data-request-id")
    api_card.get_by_role("button", name=re.compile("^Deny")).click()
    expect(api_card.get_by_test_id("action-error")).to_contain_text("needs a reason")
    assert kg.admin.request(api_id)["state"] == "pending", "an empty denial must not reach the server"
    api_card.get_by_label("Comment (required to deny)").fill("not during the change freeze")
    api_card.get_by_role("button", name=re.compile("^Deny")).click()
    code, message, status = client_error(lambda: waiting_api.result(timeout=30))
    assert (code, status) == ("AccessDeniedException", 400)
    assert "was denied by alice: not during the change freeze" in message

    bulk_card.get_by_role("button", name=re.compile("^Deny")).click()
    code, message, _ = client_error(lambda: waiting_bulk.result(timeout=30))
    assert "was denied by alice: no bulk exports during the freeze" in message

    # 4. The Decided section: newest first, with who decided and why.
    expect(page.get_by_test_id("pending-empty")).to_be_visible()
    denied = card_by_id(page, "decided", api_id)
    expect(denied.get_by_test_id("request-state")).to_have_text("denied")
    expect(denied.get_by_test_id("request-denial")).to_contain_text("alice")
    expect(denied.get_by_test_id("request-denial")).to_contain_text("not during the change freeze")
    decided_items = page.get_by_test_id("decided-list").get_by_test_id("decided-request")
    expect(decided_items).to_have_count(3)
    assert decided_items.last.get_attribute("data-request-id") == request_id, "newest first"
    expect(card_by_id(page, "decided", request_id).get_by_test_id("request-approvals")).to_contain_text("alice")
    no_secret_in(page.content())


def test_page_shows_the_servers_refusals(quick_keygate, ui):
    kg = quick_keygate
    page = ui.page
    open_ui(page, kg)

    # A bad token: the server's message, no session kept.
    sign_in(page, "kg-not-a-token")
    expect(page.get_by_test_id("signin-error")).to_contain_text("unknown approver token")
    expect(page.get_by_test_id("app")).to_be_hidden()
    assert session_token(page) is None
    # A workload's credential is no approver token either.
    sign_in(page, WORKLOAD_TOKEN)
    expect(page.get_by_test_id("signin-error")).to_contain_text("workload credentials cannot use the admin API")
    assert session_token(page) is None

    request_id = expect_held(lambda: justified(kg, JUSTIFY_DB).get_secret_value(SecretId=PROD_DB))

    # bob owns demo-app: the page shows the server's refusal and nothing changes.
    sign_in(page, BOB)
    signed_in_as(page, "bob")
    card = card_by_id(page, "pending", request_id)
    expect(card.get_by_test_id("request-justification")).to_have_text(JUSTIFY_DB)
    card.get_by_label("Comment (required to deny)").fill("looks fine to me")
    card.get_by_role("button", name=re.compile("^Approve")).click()
    owner_error = admin_error(kg, request_id, BOB)
    assert owner_error["code"] == "owner", owner_error
    expect(card.get_by_test_id("action-error")).to_contain_text(owner_error["message"])
    expect(card.get_by_label("Comment (required to deny)")).to_have_value("looks fine to me")
    assert kg.admin.request(request_id)["state"] == "pending"

    # Sign out: the token leaves the tab.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    expect(page.get_by_test_id("app")).to_be_hidden()
    assert session_token(page) is None

    # carol is in no group of the rule.
    sign_in(page, CAROL)
    signed_in_as(page, "carol")
    card = card_by_id(page, "pending", request_id)
    card.get_by_role("button", name=re.compile("^Approve")).click()
    group_error = admin_error(kg, request_id, CAROL)
    assert group_error["code"] == "not_in_group", group_error
    expect(card.get_by_test_id("action-error")).to_contain_text(group_error["message"])
    assert kg.admin.request(request_id)["state"] == "pending"
    no_secret_in(page.content())


def test_attacker_text_is_shown_as_text(quick_keygate, ui):
    """Justifications and resource names come from workloads: never markup."""
    kg = quick_keygate
    hostile_justification = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b><script>document.title="pwned"</script>'
    hostile_secret = "prod/<img src=x onerror=alert(1)>"
    request_id = expect_held(
        lambda: justified(kg, hostile_justification).get_secret_value(SecretId=hostile_secret)
    )
    page = ui.page
    open_ui(page, kg)
    sign_in(page, ALICE)
    card = card_by_id(page, "pending", request_id)
    expect(card.get_by_test_id("request-justification")).to_have_text(hostile_justification)
    expect(card.get_by_test_id("request-resources")).to_have_text(hostile_secret)
    assert page.locator("img").count() == 0
    assert page.locator("b").count() == 0
    assert page.locator("script").count() == 1, "only the page's own script"
    assert "pwned" not in page.title()


def test_page_follows_the_event_stream(keygate, ui, background):
    """Live updates: the page reads GET /admin/v1/events (fetch + stream reader,
    since it needs the Authorization header) and refreshes at once."""
    page = ui.page
    open_ui(page, keygate)
    sign_in(page, ALICE)
    signed_in_as(page, "alice")
    expect(page.get_by_test_id("live-status")).to_have_text("Live")

    waiting = background.submit(justified(keygate, JUSTIFY_DB).get_secret_value, SecretId=PROD_DB)
    # well under the 5 s the page would take by polling
    card = pending_card(page, JUSTIFY_DB)
    expect(card).to_have_count(1, timeout=3000)
    expect(page.get_by_test_id("flash")).to_contain_text("New request: demo-app: GetSecretValue prod/payments/db")

    # Decided elsewhere (the API, another approver): this page hears of it at once.
    request_id = card.get_attribute("data-request-id")
    keygate.admin.deny(request_id, reason="decided elsewhere")
    expect(card).to_have_count(0, timeout=3000)
    expect(card_by_id(page, "decided", request_id).get_by_test_id("request-denial")).to_contain_text(
        "decided elsewhere", timeout=3000
    )
    client_error(lambda: waiting.result(timeout=30))


def test_break_glass_bypass_is_acknowledged_in_the_page(quick_keygate, ui):
    kg = restart_with_rule(quick_keygate, "prod-read", add='break_glass = ["demo-app"]')
    page = ui.page
    open_ui(page, kg)
    sign_in(page, ALICE)
    signed_in_as(page, "alice")
    expect(page.get_by_test_id("reviews-empty")).to_be_visible()

    sm = with_header(kg, "X-Keygate-Break-Glass", "payments outage INC-9001, on-call cannot wait")
    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB], "a bypass passes at once"

    card = page.get_by_test_id("reviews-list").get_by_test_id("review-request")
    expect(card).to_have_count(1)
    request_id = card.get_attribute("data-request-id")
    expect(card.get_by_test_id("request-state")).to_have_text("bypassed")
    expect(card.get_by_test_id("request-bypass")).to_contain_text("demo-app")
    expect(card.get_by_test_id("request-bypass")).to_contain_text("payments outage INC-9001, on-call cannot wait")
    card.get_by_label("Review comment").fill("checked with the payments on-call")
    card.get_by_role("button", name=re.compile("^Acknowledge")).click()

    expect(card).to_have_count(0)
    expect(page.get_by_test_id("reviews-empty")).to_be_visible()
    decided = card_by_id(page, "decided", request_id)
    expect(decided.get_by_test_id("request-acknowledged")).to_contain_text("alice")
    expect(decided.get_by_test_id("request-acknowledged")).to_contain_text("checked with the payments on-call")
    assert kg.admin.request(request_id)["bypass"]["acknowledged"]["approver"] == "alice"
    no_secret_in(page.content())


def test_quorum_of_two_factors_with_a_narrowed_grant(quick_keygate, ui, browser):
    kg = restart_with_rule(
        quick_keygate,
        "prod-read",
        replace={
            'approvers = "secops"\napprovals = 1\n': "",
            'grant = "once"': 'grant = "window"\ngrant_uses = 5\ngrant_window = "10m"',
        },
        add='factors = [{ group = "secops", approvals = 1 }, { group = "payments", approvals = 1 }]',
    )
    sm = justified(kg, JUSTIFY_DB)
    request_id = expect_held(lambda: sm.get_secret_value(SecretId=PROD_DB))
    page = ui.page
    open_ui(page, kg)
    sign_in(page, ALICE)
    card = card_by_id(page, "pending", request_id)
    expect(card.get_by_test_id("approvals-progress")).to_have_text("secops 0 of 1 · payments 0 of 1 (all needed)")

    # Widening is refused by the server, and the page says why.
    card.get_by_text("Narrow the grant").click()
    card.get_by_label("Uses").fill("99")
    card.get_by_role("button", name=re.compile("^Approve")).click()
    expect(card.get_by_test_id("action-error")).to_contain_text("Not approved: ")
    refused = kg.admin.call("POST", f"/admin/v1/requests/{request_id}/approve", {"grant_uses": 99})
    assert 400 <= refused.status < 500, refused.text
    expect(card.get_by_test_id("action-error")).to_contain_text(error_of(refused)["message"])
    assert kg.admin.request(request_id)["approvals"] == []

    # alice narrows to 2 uses within 1 minute: one factor of two is met.
    card.get_by_label("Uses").fill("2")
    card.get_by_label("Window").fill("1m")
    card.get_by_role("button", name=re.compile("^Approve")).click()
    expect(card.get_by_test_id("action-result")).to_contain_text("Your approval counts")
    expect(card.get_by_test_id("approvals-progress")).to_have_text("secops 1 of 1 · payments 0 of 1 (all needed)")
    expect(card.get_by_test_id("request-approvals")).to_contain_text("narrowed the grant to 2 uses, window 1m")

    # carol (payments), in her own browser, completes the quorum.
    carol = Ui(browser)
    try:
        open_ui(carol.page, kg)
        sign_in(carol.page, CAROL)
        signed_in_as(carol.page, "carol")
        card_by_id(carol.page, "pending", request_id).get_by_role("button", name=re.compile("^Approve")).click()
        expect(card_by_id(carol.page, "decided", request_id).get_by_test_id("request-state")).to_have_text("approved")
        assert not carol.problems(), carol.problems()
    finally:
        carol.close()

    # alice's page follows; the grant is the narrowed one.
    decided = card_by_id(page, "decided", request_id)
    expect(decided.get_by_test_id("request-state")).to_have_text("approved")
    expect(decided.get_by_test_id("grant-uses-left")).to_have_text("2 uses left")
    assert sm.get_secret_value(SecretId=PROD_DB)["SecretString"] == SECRETS[PROD_DB]
    view = kg.admin.request(request_id)
    assert view["grant"]["uses_left"] == 1
    # a grant's use publishes no event: the page shows it at its next refresh (here: a reload)
    page.reload()
    decided = card_by_id(page, "decided", request_id)
    expect(decided.get_by_test_id("grant-used-at").locator("li")).to_have_count(1)
    expect(decided.get_by_test_id("grant-uses-left")).to_have_text("1 use left")


def test_escalated_request_shows_its_badge_and_the_escalation_group_may_approve(quick_keygate, ui):
    kg = restart_with_rule(
        quick_keygate,
        "prod-read",
        add='escalate_after = "1s"\nescalate_to = "payments"\nescalation_can_approve = true',
    )
    request_id = expect_held(lambda: justified(kg, JUSTIFY_DB).get_secret_value(SecretId=PROD_DB))
    page = ui.page
    open_ui(page, kg)
    sign_in(page, CAROL)
    signed_in_as(page, "carol")
    card = card_by_id(page, "pending", request_id)
    expect(card.get_by_test_id("escalated-badge")).to_have_text("escalated to payments")
    card.get_by_role("button", name=re.compile("^Approve")).click()
    expect(card_by_id(page, "decided", request_id).get_by_test_id("request-approvals")).to_contain_text("carol")
    assert kg.admin.request(request_id)["state"] == "approved"


def test_page_reconnects_after_keygate_restarts(quick_keygate, ui):
    kg = quick_keygate
    page = ui.page
    open_ui(page, kg)
    sign_in(page, ALICE)
    signed_in_as(page, "alice")
    status = page.get_by_test_id("live-status")
    expect(status).to_have_text("Live")

    kg.stop()
    expect(status).to_have_attribute("data-mode", "reconnecting")
    expect(page.get_by_test_id("global-error")).to_contain_text("Could not load")
    kg.start()  # same ports and state

    expect(status).to_have_text("Live", timeout=30_000)  # backoff: 1 s, 2 s, 4 s, ...
    expect(page.get_by_test_id("global-error")).to_be_empty()
    request_id = expect_held(lambda: justified(kg, JUSTIFY_DB).get_secret_value(SecretId=PROD_DB))
    expect(card_by_id(page, "pending", request_id)).to_have_count(1, timeout=3000)
    signed_in_as(page, "alice")  # the session survived
