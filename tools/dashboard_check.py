#!/usr/bin/env python3
"""Checks the coordinator's dashboard (`GET /`, coordinator/assets/dashboard.html) in headless Chromium.

    dashboard_check.py --url http://127.0.0.1:PORT/ --token TOKEN --screenshot out.png \\
        [--expect-running-job JOB_ID] [--expect-model NAME [--expect-comparison VERSION]...
        [--expect-alias-history ALIAS]...] [--expect-promotion JOB_ID]... [--expect-token-form]
        [--timeout 60]

Opens URL#token=TOKEN with the system Chromium (deploy/chromium.sh installs it; Playwright's own
browser download is never used) and, while the page runs, records console messages of type error,
uncaught page errors and failed requests. Then:

- by default waits until the page rendered `/v1/overview` once (body[data-loaded="1"]);
- with --expect-running-job JOB_ID, also waits until that job's card shows progress
  (`.job[data-job-id=JOB_ID] .progress` with data-epoch > 0) and checks that its loss curve
  (`svg.loss-curve polyline`) has at least 2 points;
- with --expect-model NAME, also waits until the models section (quality and promotion) shows
  that model with at least one version (`.model-card[data-model=NAME] tr[data-version]`), and
  checks that nothing in the section reports an error (`#models-alert`, `.alert`);
  - with --expect-comparison VERSION, until that version's row shows its evaluation's comparisons
    (`.comparison[data-before]`), each with an intent weighted-F1 delta
    (`.delta[data-metric][data-value]`) and a negative flips count (`.flips[data-negative]`);
  - with --expect-alias-history ALIAS, until that alias's history lists a move
    (`.alias-history[data-alias=ALIAS] tr[data-move]`);
- with --expect-promotion JOB_ID, until that job's row in the recent jobs shows the promotion's
  outcome (`td.promotion[data-outcome]`: promoted, refused or error) and its summary
  (`tr.promotion-row[data-promotion-for=JOB_ID]`);
- with --expect-token-form (for a wrong token), waits instead until the token form is shown with
  "wrong or missing token", and checks that the page never rendered data;

saves a full-page screenshot, prints a JSON summary on stdout and exits 0 when everything held,
1 (with the reasons on stderr) when an expectation was not met or the page logged a console error,
threw, or had a request fail, 2 on a usage error or when Playwright or Chromium is missing.

The browser's own "Failed to load resource: ... 401" line is expected with --expect-token-form and
is not counted, nor is its "... 404" line for a version's `/evaluation` (a version without one:
the page shows a dash); every other console error is. Run it with the venv of
deploy/python-peers.sh:
.venv/bin/python tools/dashboard_check.py ...
"""

import argparse
import json
import os
import sys
import time
from urllib.parse import quote, urldefrag

DEFAULT_CHROMIUM = "/usr/bin/chromium"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the dashboard, e.g. http://127.0.0.1:8080/")
    ap.add_argument("--token", required=True, help="the coordinator's API token")
    ap.add_argument("--screenshot", required=True, help="where to save a full-page PNG")
    ap.add_argument("--expect-running-job", metavar="JOB_ID",
                    help="wait until this job shows progress and a loss curve")
    ap.add_argument("--expect-model", metavar="NAME",
                    help="wait until the models section shows this model with its versions")
    ap.add_argument("--expect-comparison", metavar="VERSION", action="append", default=[],
                    help="(with --expect-model) wait until this version shows its comparisons "
                         "(deltas and negative flips); repeatable")
    ap.add_argument("--expect-alias-history", metavar="ALIAS", action="append", default=[],
                    help="(with --expect-model) wait until this alias's history lists a move; repeatable")
    ap.add_argument("--expect-promotion", metavar="JOB_ID", action="append", default=[],
                    help="wait until this job's row shows its promotion outcome and summary; repeatable")
    ap.add_argument("--expect-token-form", action="store_true",
                    help="expect the token to be refused: the form shows, no data is rendered")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait in all (default 60)")
    ap.add_argument("--chromium", default=os.environ.get("REFIT_CHROMIUM", DEFAULT_CHROMIUM),
                    help=f"the Chromium binary (default $REFIT_CHROMIUM or {DEFAULT_CHROMIUM})")
    args = ap.parse_args(argv)
    if args.expect_token_form and (args.expect_running_job or args.expect_model or args.expect_promotion):
        ap.error("--expect-token-form excludes the --expect-* options that need data")
    if (args.expect_comparison or args.expect_alias_history) and not args.expect_model:
        ap.error("--expect-comparison and --expect-alias-history need --expect-model")
    if args.timeout <= 0:
        ap.error("--timeout must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("dashboard_check: playwright is missing; run deploy/python-peers.sh and use .venv/bin/python",
              file=sys.stderr)
        return 2
    if not os.access(args.chromium, os.X_OK):
        print(f"dashboard_check: no Chromium at {args.chromium}; run deploy/chromium.sh", file=sys.stderr)
        return 2

    base, _ = urldefrag(args.url)
    # The token goes in the fragment: it never reaches the server, and it is never printed.
    url = base + "#token=" + quote(args.token, safe="")
    deadline = time.monotonic() + args.timeout

    def left_ms():
        return max(1.0, (deadline - time.monotonic()) * 1000)

    console_errors, page_errors, failed_requests, warnings = [], [], [], []
    problems = []
    summary = {"url": base, "ok": False}

    def redact(text):
        for form in (args.token, quote(args.token, safe="")):
            if form:
                text = text.replace(form, "***")
        return text

    def on_console(msg):
        text = redact(msg.text)
        if msg.type == "error":
            loc = msg.location or {}
            where = loc.get("url", "")
            # Chromium's own line for a refused token; the page is expected to handle it.
            if args.expect_token_form and "status of 401" in text and where.split("#")[0].endswith("/v1/overview"):
                return
            # Likewise for a version without an evaluation: the page shows a dash.
            if "status of 404" in text and where.split("?")[0].endswith("/evaluation"):
                return
            console_errors.append(text + (f" ({redact(where)}:{loc.get('lineNumber', 0)})" if where else ""))
        elif msg.type == "warning":
            warnings.append(text)

    def on_page_error(err):
        page_errors.append(redact(f"{err.name}: {err.message}" if getattr(err, "name", None) else str(err)))

    def on_request_failed(req):
        failure = req.failure or "unknown failure"
        # Requests cut off by the page being closed at the end are not failures of the page.
        if closing and "ERR_ABORTED" in failure:
            return
        failed_requests.append(f"{req.method} {redact(req.url)}: {failure}")

    closing = False
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(
                executable_path=args.chromium,
                headless=True,
                args=["--headless=new", "--no-sandbox", "--disable-gpu"],
            )
        except PlaywrightError as e:
            print(f"dashboard_check: cannot start {args.chromium}: {e}", file=sys.stderr)
            return 2
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            page.on("requestfailed", on_request_failed)

            try:
                response = page.goto(url, wait_until="load", timeout=left_ms())
                if response is None or not response.ok:
                    status = response.status if response else "no response"
                    problems.append(f"GET {base} answered {status}")
            except PlaywrightError as e:
                problems.append(f"cannot open {base}: {redact(str(e).splitlines()[0])}")

            if not problems:
                # The page must take the token out of the address bar.
                if "token=" in page.url:
                    problems.append("the token is still in the address bar after load")

            if not problems and args.expect_token_form:
                try:
                    page.wait_for_selector("#token-form", state="visible", timeout=left_ms())
                    page.wait_for_function(
                        "() => document.body.dataset.state === 'auth' && "
                        "/wrong or missing token/.test(document.getElementById('auth-message').textContent)",
                        timeout=left_ms())
                    summary["token_form"] = True
                    if page.evaluate("() => document.body.dataset.loaded === '1'"):
                        problems.append("the page rendered data with a refused token")
                    if page.evaluate("() => sessionStorage.length") != 0:
                        problems.append("the refused token is still in sessionStorage")
                except PlaywrightTimeout:
                    problems.append(f"the token form with \"wrong or missing token\" did not show within "
                                    f"{args.timeout:g} s (body state: {body_state(page)})")
            elif not problems:
                try:
                    page.wait_for_selector('body[data-loaded="1"]', state="attached", timeout=left_ms())
                    summary["loaded"] = True
                except PlaywrightTimeout:
                    problems.append(f"the page did not render /v1/overview within {args.timeout:g} s "
                                    f"(body state: {body_state(page)}; banner: {banner_text(page)!r})")

            if not problems and args.expect_running_job:
                check_running_job(page, args, left_ms, summary, problems, PlaywrightTimeout)

            if not problems and args.expect_model:
                check_model(page, args, left_ms, summary, problems, PlaywrightTimeout)

            for job in args.expect_promotion if not problems else []:
                check_promotion(page, job, args, left_ms, summary, problems, PlaywrightTimeout)

            if not problems and not args.expect_token_form:
                summary["sections"] = page.evaluate("""() => ({
                    active_jobs: document.querySelectorAll('#active .job').length,
                    queues: document.querySelectorAll('#queues tbody tr').length,
                    workers: document.querySelectorAll('#workers tbody tr').length,
                    recent_jobs: document.querySelectorAll('#recent tbody tr[data-job-id]').length,
                    promotions: document.querySelectorAll('#recent td.promotion[data-outcome]').length,
                    models_loaded: document.getElementById('models').dataset.loaded === '1',
                    models: document.querySelectorAll('#models .model-card').length,
                    versions: document.querySelectorAll('#models tr[data-version]').length,
                    comparisons: document.querySelectorAll('#models .comparison').length,
                    alias_moves: document.querySelectorAll('#models .alias-history tr[data-move]').length,
                    banner: document.getElementById('banner').hidden ? null
                            : document.getElementById('banner').textContent,
                })""")

            try:
                page.screenshot(path=args.screenshot, full_page=True, timeout=max(5000.0, left_ms()))
                summary["screenshot"] = args.screenshot
            except PlaywrightError as e:
                problems.append(f"cannot save the screenshot to {args.screenshot}: {str(e).splitlines()[0]}")
            closing = True
        finally:
            closing = True
            browser.close()

    if console_errors:
        problems.append("console errors:\n" + "\n".join("  " + e for e in console_errors))
    if page_errors:
        problems.append("page errors:\n" + "\n".join("  " + e for e in page_errors))
    if failed_requests:
        problems.append("failed requests:\n" + "\n".join("  " + e for e in failed_requests))

    summary.update({
        "ok": not problems,
        "console_errors": console_errors,
        "page_errors": page_errors,
        "failed_requests": failed_requests,
        "console_warnings": warnings,
    })
    print(json.dumps(summary, indent=2))
    if problems:
        print("dashboard_check: FAILED", file=sys.stderr)
        for p in problems:
            print("- " + p, file=sys.stderr)
        return 1
    return 0


def check_running_job(page, args, left_ms, summary, problems, PlaywrightTimeout):
    job = args.expect_running_job
    sel = f'.job[data-job-id="{css_string(job)}"]'
    try:
        page.wait_for_function(
            """(sel) => {
                const p = document.querySelector(sel + ' .progress');
                return !!p && parseFloat(p.dataset.epoch) > 0;
            }""",
            arg=sel, timeout=left_ms())
    except PlaywrightTimeout:
        state = page.evaluate(
            """(sel) => {
                const job = document.querySelector(sel);
                if (!job) return 'no such job card; cards: ' +
                    JSON.stringify([...document.querySelectorAll('.job')].map(j => j.dataset.jobId));
                const p = job.querySelector('.progress');
                return p ? 'progress data-epoch=' + p.dataset.epoch + ' data-total=' + p.dataset.total
                         : 'the card has no .progress';
            }""", sel)
        problems.append(f"job {job} did not show progress (data-epoch > 0) within {args.timeout:g} s: {state}")
        return
    info = page.evaluate(
        """(sel) => {
            const job = document.querySelector(sel);
            const p = job.querySelector('.progress');
            const line = job.querySelector('svg.loss-curve polyline');
            const pts = line ? (line.getAttribute('points') || '').trim().split(/\\s+/).filter(Boolean) : [];
            return {
                epoch: parseFloat(p.dataset.epoch),
                total: parseFloat(p.dataset.total),
                progress_text: p.textContent.trim(),
                loss_curve_points: pts.length,
                has_polyline: !!line,
            };
        }""", sel)
    summary["job"] = {"id": job, **info}
    if not info["has_polyline"]:
        problems.append(f"job {job} has no loss curve (svg.loss-curve polyline)")
    elif info["loss_curve_points"] < 2:
        problems.append(f"job {job}'s loss curve has {info['loss_curve_points']} point(s), expected at least 2")


def check_model(page, args, left_ms, summary, problems, PlaywrightTimeout):
    model = args.expect_model
    sel = f'#models .model-card[data-model="{css_string(model)}"]'
    try:
        page.wait_for_function(
            "(sel) => document.querySelectorAll(sel + ' tr[data-version]').length > 0",
            arg=sel, timeout=left_ms())
    except PlaywrightTimeout:
        problems.append(f"model {model} did not show with its versions within {args.timeout:g} s: "
                        f"{models_state(page)}")
        return

    for version in args.expect_comparison:
        row = f'{sel} tr[data-version="{css_string(version)}"]'
        try:
            page.wait_for_function(
                "(row) => document.querySelectorAll(row + ' td.evaluation .comparison').length > 0",
                arg=row, timeout=left_ms())
        except PlaywrightTimeout:
            state = page.evaluate(
                """(row) => {
                    const r = document.querySelector(row);
                    if (!r) return 'no such row';
                    const e = r.querySelector('td.evaluation');
                    return 'data-evaluation=' + (e && e.dataset.evaluation) + ': ' + r.textContent.trim();
                }""", row)
            problems.append(f"version {version} of {model} did not show comparisons within "
                            f"{args.timeout:g} s: {state}")
            return
        comparisons = page.evaluate(
            """(row) => {
                const r = document.querySelector(row);
                const flips = [...r.querySelectorAll('.flips')];
                return [...r.querySelectorAll('.comparison')].map(c => {
                    const f = flips.find(x => x.dataset.before === c.dataset.before);
                    return {
                        before: c.dataset.before,
                        roles: c.dataset.roles ? c.dataset.roles.split(',') : [],
                        deltas: Object.fromEntries([...c.querySelectorAll('.delta')].map(
                            d => [d.dataset.metric, d.dataset.value === undefined ? null : Number(d.dataset.value)])),
                        negative_flips: f ? Number(f.dataset.negative) : null,
                        text: c.textContent.trim(),
                    };
                });
            }""", row)
        summary.setdefault("comparisons", {})[version] = comparisons
        for c in comparisons:
            wf1 = c["deltas"].get("intent_weighted_f1")
            if not isinstance(wf1, (int, float)) or wf1 != wf1:
                problems.append(f"{version} vs {c['before']}: no intent weighted-F1 delta ({c['text']!r})")
            flips = c["negative_flips"]
            if not isinstance(flips, (int, float)) or flips != flips or flips < 0 or flips != int(flips):
                problems.append(f"{version} vs {c['before']}: no negative flips count")

    for alias in args.expect_alias_history:
        box = f'{sel} .alias-history[data-alias="{css_string(alias)}"]'
        try:
            page.wait_for_function(
                "(box) => document.querySelectorAll(box + ' tr[data-move]').length > 0",
                arg=box, timeout=left_ms())
        except PlaywrightTimeout:
            problems.append(f"alias {alias} of {model} did not show a move within {args.timeout:g} s: "
                            f"{models_state(page)}")
            return
        moves = page.evaluate(
            """(box) => [...document.querySelectorAll(box + ' tr[data-move]')].map(
                tr => [...tr.cells].map(td => td.textContent.trim()))""", box)
        summary.setdefault("alias_history", {})[alias] = moves

    alerts = page.evaluate(
        """() => [document.getElementById('models-alert'), ...document.querySelectorAll('#models .alert')]
            .filter(a => a && !a.hidden).map(a => a.textContent.trim())""")
    if alerts:
        problems.append("the models section reports errors: " + "; ".join(alerts))


def check_promotion(page, job, args, left_ms, summary, problems, PlaywrightTimeout):
    row = f'#recent tr[data-job-id="{css_string(job)}"]'
    sub = f'#recent tr.promotion-row[data-promotion-for="{css_string(job)}"]'
    try:
        page.wait_for_function(
            """([row, sub]) => {
                const cell = document.querySelector(row + ' td.promotion');
                const line = document.querySelector(sub);
                return !!cell && ['promoted', 'refused', 'error'].includes(cell.dataset.outcome)
                    && !!line && line.textContent.replace('promotion', '').trim().length > 0;
            }""",
            arg=[row, sub], timeout=left_ms())
    except PlaywrightTimeout:
        state = page.evaluate(
            """(row) => {
                const r = document.querySelector(row);
                if (!r) return 'no such row in the recent jobs';
                const cell = r.querySelector('td.promotion');
                return cell ? 'promotion ' + (cell.dataset.outcome || '?') + ': ' + cell.textContent.trim()
                            : 'the row has no promotion cell';
            }""", row)
        problems.append(f"job {job} did not show its promotion within {args.timeout:g} s: {state}")
        return
    summary.setdefault("promotions", {})[job] = page.evaluate(
        """([row, sub]) => ({
            outcome: document.querySelector(row + ' td.promotion').dataset.outcome,
            alias: document.querySelector(row + ' td.promotion').dataset.alias,
            summary: [...document.querySelector(sub).cells[0].childNodes]
                .filter(n => !(n.classList && n.classList.contains('k')))
                .map(n => n.textContent).join('').trim(),
        })""", [row, sub])


def models_state(page):
    try:
        return page.evaluate(
            """() => {
                const m = document.getElementById('models');
                const alert = document.getElementById('models-alert');
                return 'models loaded=' + (m.dataset.loaded || '0') + ', cards ' +
                    JSON.stringify([...m.querySelectorAll('.model-card')].map(c => c.dataset.model)) +
                    (alert && !alert.hidden ? ', alert: ' + alert.textContent : '');
            }""")
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


def css_string(s):
    return s.replace("\\", "\\\\").replace('"', '\\"')


def body_state(page):
    try:
        return page.evaluate("() => document.body.dataset.state || 'unset'")
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


def banner_text(page):
    try:
        return page.evaluate("() => { const b = document.getElementById('banner');"
                             " return b && !b.hidden ? b.textContent : null; }")
    except Exception:  # noqa: BLE001 - only for the message
        return None


if __name__ == "__main__":
    sys.exit(main())
