//! The dashboard in a real browser: Debian's Chromium driven through chromedriver (WebDriver)
//! against `errand_web::router` served in-process on 127.0.0.1, over a fresh SQLite file holding
//! known jobs — queues, retries, scheduled and dead jobs, a busy process, metrics — with XSS
//! payloads in arguments, error messages, class names and queue names.
//!
//! 1. Every page shows the fixture's figures, and no dialog, injected element, console error
//!    or CSP violation appears.
//! 2. The buttons change the backend (checked through the admin side, not the page).
//! 3. A POST without the CSRF token is refused and changes nothing.
//! 4. Every page is captured in light and dark mode under `target/screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`).

mod browser_support;

use browser_support::*;
use errand::broker::Fleet;
use errand_core::admin::{SetName, SetRange};
use errand_core::broker::{Coordination, RemoteSignal};
use serde_json::{Value, json};
use std::time::Instant;

/// Every page worth a look, as (screenshot name, path).
async fn pages(fx: &Fixture) -> Vec<(&'static str, String)> {
    let j = &fx.jobs;
    let mut pages = vec![
        ("dashboard", "/".to_string()),
        ("busy", "/busy".into()),
        ("queues", "/queues".into()),
        ("queue-default", "/queues/default".into()),
        ("queue-xss", format!("/queues/{}", enc(Q_SCRIPT))),
        ("retries", "/retries".into()),
        (
            "retry-job",
            format!(
                "/retries/job?key={}",
                enc(&fx.key(SetName::Retry, &j.retry_xss).await)
            ),
        ),
        ("scheduled", "/scheduled".into()),
        (
            "scheduled-job",
            format!(
                "/scheduled/job?key={}",
                enc(&fx.key(SetName::Scheduled, &j.sched_xss).await)
            ),
        ),
        ("dead", "/dead".into()),
        (
            "dead-job",
            format!(
                "/dead/job?key={}",
                enc(&fx.key(SetName::Dead, &j.dead_edit).await)
            ),
        ),
        ("periodic", "/periodic".into()),
        ("job-metrics", "/job-metrics".into()),
        ("batches", "/batches".into()),
    ];
    // The fixture has a batch only on a backend that keeps batches.
    if fx.broker.capabilities().batches {
        pages.push(("batch", format!("/batches/{BATCH}")));
    }
    pages
}

/// The page's whole visible text.
async fn body_text(b: &Browser) -> String {
    b.text("body").await
}

fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[tokio::test]
async fn every_page_shows_the_known_figures_and_runs_nothing_from_job_data() {
    require_browser();
    let _one = exclusive().await;
    let started = Instant::now();
    let fx = Fixture::new().await;
    let b = Browser::launch().await;
    let j = fx.jobs.clone();

    // Dashboard: the cards equal the fixture and the backend's own totals.
    b.goto(&fx.url("/")).await;
    let o = errand::api::overview(&*fx.admin).await.unwrap();
    for (stat, want, backend) in [
        ("processed", PROCESSED, o.processed),
        ("failed", FAILED, o.failed),
        ("busy", 2, o.busy),
        ("enqueued", ENQUEUED, o.enqueued),
        ("retries", 3, o.retries),
        ("scheduled", 2, o.scheduled),
        ("dead", 3, o.dead),
        ("processes", 1, o.processes),
    ] {
        assert_eq!(want, backend, "the backend's {stat}");
        let shown = b.text(&format!(".stat-value[data-stat=\"{stat}\"]")).await;
        assert_eq!(shown, num(want), "dashboard card {stat}");
    }
    for (path, want) in [
        ("/busy", 2),
        ("/queues", ENQUEUED),
        ("/retries", 3),
        ("/scheduled", 2),
        ("/dead", 3),
    ] {
        let shown = b.text(&format!("a.nav-link[href=\"{path}\"] .count")).await;
        assert_eq!(shown, num(want), "nav count of {path}");
    }
    assert!(body_text(&b).await.contains("sqlite"), "the backend kind");
    b.assert_clean("dashboard").await;

    // Busy: the process and its two running jobs.
    b.goto(&fx.url("/busy")).await;
    let subtitle = b.text(".page-head .subtitle").await;
    assert!(
        subtitle.contains("2 jobs running"),
        "busy subtitle: {subtitle}"
    );
    let process = b.text("table tbody tr").await;
    assert!(
        process.contains(&format!("{HOSTNAME}:{PID}")),
        "hostname:pid in {process:?}"
    );
    assert!(
        process.contains("2 / 10"),
        "busy / concurrency in {process:?}"
    );
    assert!(process.contains("shop"), "the tag in {process:?}");
    let running = body_text(&b).await;
    for jid in &j.running {
        assert!(running.contains(jid.as_str()), "running job {jid}");
    }
    assert!(running.contains(XSS_SCRIPT), "a class shown as text");
    b.assert_clean("busy").await;

    // Queues: every size, the old queue's latency.
    b.goto(&fx.url("/queues")).await;
    let subtitle = b.text(".page-head .subtitle").await;
    assert_eq!(
        subtitle,
        format!("{} queues, {ENQUEUED} jobs waiting", known_queues().len())
    );
    for (name, size) in known_queues() {
        let row = format!("tr:has(> td > a[href=\"/queues/{}\"])", enc(name));
        assert_eq!(
            b.text(&format!("{row} > td:nth-child(1)")).await,
            shown(name),
            "queue name shown as text (bidi controls escaped)"
        );
        assert_eq!(
            b.text(&format!("{row} > td:nth-child(2)")).await,
            num(size),
            "size of {name:?}"
        );
    }
    let latency = b
        .text("tr:has(> td > a[href=\"/queues/critical\"]) > td:nth-child(3)")
        .await;
    assert_eq!(
        latency, "2 h",
        "latency of the queue whose jobs are 2 h old"
    );
    b.assert_clean("queues").await;

    for (name, size) in known_queues() {
        b.goto(&fx.url(&format!("/queues/{}", enc(name)))).await;
        let h1 = b.text("h1").await;
        assert_eq!(h1, format!("Queue {}", shown(name)), "queue page title");
        let subtitle = b.text(".page-head .subtitle").await;
        let jobs = if size == 1 { "job" } else { "jobs" };
        assert!(
            subtitle.starts_with(&format!("{size} {jobs}")),
            "{name:?}: {subtitle}"
        );
        assert_eq!(b.count("tbody tr").await as u64, size, "{name:?} rows");
        b.assert_clean(&format!("queue {name:?}")).await;
    }

    // The three sets: totals, rows, payloads as text.
    for (slug, total, jids) in [
        (
            "retries",
            3,
            vec![&j.retry_plain, &j.retry_xss, &j.retry_mailer],
        ),
        ("scheduled", 2, vec![&j.sched_plain, &j.sched_xss]),
        ("dead", 3, vec![&j.dead_plain, &j.dead_edit, &j.dead_xss]),
    ] {
        b.goto(&fx.url(&format!("/{slug}"))).await;
        assert_eq!(
            b.text(".page-head .subtitle").await,
            format!("{total} jobs")
        );
        assert_eq!(b.count("tbody tr").await, total, "{slug} rows");
        let text = body_text(&b).await;
        for jid in jids {
            assert!(text.contains(jid.as_str()), "{slug}: job {jid}");
        }
        for payload in [XSS_SCRIPT, XSS_IMG, XSS_JS_URL, XSS_TEMPLATE] {
            assert!(text.contains(payload), "{slug}: {payload:?} shown as text");
        }
        b.assert_clean(slug).await;
    }
    let retries = body_text_of(&b, &fx.url("/retries")).await;
    assert!(retries.contains("RuntimeError: card declined"));

    // A job of each set in full.
    let key = fx.key(SetName::Retry, &j.retry_plain).await;
    b.goto(&fx.url(&format!("/retries/job?key={}", enc(&key))))
        .await;
    assert_eq!(b.text("h1").await, "Billing::Charge");
    assert_eq!(b.text("pre.backtrace").await, BACKTRACE.join("\n"));
    let text = body_text(&b).await;
    assert!(text.contains("card declined") && text.contains("RuntimeError"));
    b.assert_clean("retry job").await;

    let key = fx.key(SetName::Retry, &j.retry_xss).await;
    b.goto(&fx.url(&format!("/retries/job?key={}", enc(&key))))
        .await;
    assert_eq!(b.text("h1").await, XSS_SCRIPT);
    assert_eq!(b.text("dd.error-text").await, shown(xss_text().trim()));
    b.assert_clean("retry job with payloads").await;

    let key = fx.key(SetName::Scheduled, &j.sched_xss).await;
    b.goto(&fx.url(&format!("/scheduled/job?key={}", enc(&key))))
        .await;
    assert_eq!(b.text("h1").await, XSS_JS_URL);
    b.assert_clean("scheduled job").await;

    let key = fx.key(SetName::Dead, &j.dead_edit).await;
    b.goto(&fx.url(&format!("/dead/job?key={}", enc(&key))))
        .await;
    assert_eq!(b.text("h1").await, XSS_TEXTAREA);
    let (_, stored) = fx.entry(SetName::Dead, &j.dead_edit).await.unwrap();
    let shown = b
        .js(
            "return document.querySelector('textarea[name=args]').value",
            vec![],
        )
        .await;
    let shown: Value = serde_json::from_str(shown.as_str().unwrap()).expect("textarea JSON");
    assert_eq!(
        shown,
        Value::Array(stored.args().to_vec()),
        "the textarea holds exactly the arguments, </textarea> included"
    );
    b.assert_clean("dead job").await;

    let key = fx.key(SetName::Dead, &j.dead_xss).await;
    b.goto(&fx.url(&format!("/dead/job?key={}", enc(&key))))
        .await;
    assert_eq!(b.text("h1").await, XSS_IMG);
    b.assert_clean("dead job with payloads").await;

    // Metrics: one row per class, busiest first.
    b.goto(&fx.url("/job-metrics")).await;
    let rows = b
        .js(
            "return Array.from(document.querySelectorAll('tbody tr')).map((tr) => \
             [tr.cells[0].innerText.trim(), tr.cells[1].innerText.trim(), tr.cells[2].innerText.trim()])",
            vec![],
        )
        .await;
    let want: Vec<Value> = known_metrics()
        .into_iter()
        .map(|(class, e, f)| json!([crate::shown(&class), num(e), num(f)]))
        .collect();
    assert_eq!(rows, Value::Array(want), "metrics rows");
    b.assert_clean("metrics").await;

    // Batches: the list, and the workflow's page with its steps' states.
    b.goto(&fx.url("/batches")).await;
    b.assert_clean("batches").await;
    if fx.broker.capabilities().batches {
        let list = body_text(&b).await;
        assert!(list.contains("1 batch,"), "{list}");
        assert!(
            list.contains(&crate::shown(XSS_SCRIPT)),
            "the description, as text"
        );
        b.goto(&fx.url(&format!("/batches/{BATCH}"))).await;
        let states = b
            .js(
                "return Array.from(document.querySelectorAll('table.steps tbody tr')).map((tr) => \
                 [tr.dataset.step, tr.querySelector('.step-state').innerText.trim()])",
                vec![],
            )
            .await;
        assert_eq!(
            states,
            json!([
                ["extract", "succeeded"],
                ["load", "waiting"],
                ["report", "waiting"]
            ]),
            "workflow steps"
        );
        b.assert_clean("batch").await;
    } else {
        assert!(body_text(&b).await.contains("does not keep batches"));
    }

    // The checks can see a violation: an inline script injected now is refused by the CSP,
    // does not run, and is reported in the console the checks read.
    let ran = b
        .js(
            "const s = document.createElement('script'); s.textContent = 'window.__injected = 1'; \
             document.body.appendChild(s); return window.__injected === 1;",
            vec![],
        )
        .await;
    assert_eq!(ran, json!(false), "the CSP refuses inline scripts");
    let console = eventually("the CSP report in the console", || async {
        let entries = b.console().await;
        entries
            .iter()
            .any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Content Security Policy"))
            })
            .then_some(entries)
    })
    .await;
    assert!(!console.is_empty());

    b.close().await;
    eprintln!("pages test: {:?}", started.elapsed());
}

async fn body_text_of(b: &Browser, url: &str) -> String {
    b.goto(url).await;
    body_text(b).await
}

#[tokio::test]
async fn buttons_change_the_backend() {
    require_browser();
    let _one = exclusive().await;
    let started = Instant::now();
    let fx = Fixture::new().await;
    let b = Browser::launch().await;
    let j = fx.jobs.clone();

    // Retry now on one retry row.
    let key = fx.key(SetName::Retry, &j.retry_plain).await;
    b.goto(&fx.url("/retries")).await;
    b.find(&format!(
        "tr:has(input.row-select[value=\"{key}\"]) form[action=\"/retries/job/retry\"] button"
    ))
    .await
    .click()
    .await
    .unwrap();
    assert_eq!(b.text(".flash-ok").await, "1 job enqueued");
    assert!(fx.entry(SetName::Retry, &j.retry_plain).await.is_none());
    assert!(
        fx.queued(Q_DEFAULT, &j.retry_plain).await.is_some(),
        "on its queue"
    );
    b.assert_clean("after retry now").await;

    // Two rows selected, Retry now in the bulk bar.
    b.goto(&fx.url("/retries")).await;
    let bulk = b.find("#bulk button[value=\"retry\"]").await;
    assert!(
        !bulk.is_enabled().await.unwrap(),
        "disabled while nothing is selected"
    );
    for jid in [&j.retry_xss, &j.retry_mailer] {
        let key = fx.key(SetName::Retry, jid).await;
        b.find(&format!("input.row-select[value=\"{key}\"]"))
            .await
            .click()
            .await
            .unwrap();
    }
    assert_eq!(b.text(".selected-count").await, "2 selected");
    assert!(bulk.is_enabled().await.unwrap());
    bulk.click().await.unwrap();
    assert_eq!(b.text(".flash-ok").await, "2 jobs enqueued");
    assert_eq!(fx.admin.set_size(SetName::Retry).await.unwrap(), 0);
    assert!(fx.queued(Q_CRITICAL, &j.retry_xss).await.is_some());
    assert!(fx.queued(Q_SCRIPT, &j.retry_mailer).await.is_some());
    b.assert_clean("after bulk retry").await;

    // Delete on a dead row, through its confirm dialog.
    let key = fx.key(SetName::Dead, &j.dead_plain).await;
    b.goto(&fx.url("/dead")).await;
    b.find(&format!(
        "tr:has(input.row-select[value=\"{key}\"]) form[action=\"/dead/job/delete\"] button"
    ))
    .await
    .click()
    .await
    .unwrap();
    b.accept_confirm("Delete this job?").await;
    assert_eq!(b.text(".flash-ok").await, "1 job deleted");
    assert!(fx.entry(SetName::Dead, &j.dead_plain).await.is_none());
    assert_eq!(fx.admin.set_size(SetName::Dead).await.unwrap(), 2);
    b.assert_clean("after delete").await;

    // Kill on a scheduled row.
    let key = fx.key(SetName::Scheduled, &j.sched_plain).await;
    b.goto(&fx.url("/scheduled")).await;
    b.find(&format!(
        "tr:has(input.row-select[value=\"{key}\"]) form[action=\"/scheduled/job/kill\"] button"
    ))
    .await
    .click()
    .await
    .unwrap();
    b.accept_confirm("Move this job to Dead?").await;
    assert_eq!(b.text(".flash-ok").await, "1 job moved to Dead");
    assert!(fx.entry(SetName::Scheduled, &j.sched_plain).await.is_none());
    assert!(
        fx.entry(SetName::Dead, &j.sched_plain).await.is_some(),
        "now dead"
    );
    b.assert_clean("after kill").await;

    // Pause a queue, then resume it.
    b.goto(&fx.url("/queues")).await;
    b.find(
        "tr:has(> td > a[href=\"/queues/default\"]) form[action=\"/queues/default/pause\"] button",
    )
    .await
    .click()
    .await
    .unwrap();
    assert!(b.text(".flash-ok").await.starts_with("Queue paused"));
    assert_eq!(
        fx.broker.paused_queues().await.unwrap(),
        vec![Q_DEFAULT.to_string()]
    );
    assert_eq!(
        b.text("tr:has(> td > a[href=\"/queues/default\"]) .badge")
            .await,
        "paused"
    );
    b.goto(&fx.url("/queues")).await;
    b.find(
        "tr:has(> td > a[href=\"/queues/default\"]) form[action=\"/queues/default/resume\"] button",
    )
    .await
    .click()
    .await
    .unwrap();
    assert_eq!(b.text(".flash-ok").await, "Queue resumed.");
    assert!(fx.broker.paused_queues().await.unwrap().is_empty());
    b.assert_clean("after pause and resume").await;

    // Retry a dead job with edited arguments.
    let key = fx.key(SetName::Dead, &j.dead_edit).await;
    b.goto(&fx.url(&format!("/dead/job?key={}", enc(&key))))
        .await;
    let area = b.find("textarea[name=args]").await;
    area.clear().await.unwrap();
    area.send_keys(r#"[1, "fixed", {"ok": true}]"#)
        .await
        .unwrap();
    b.find("form[action=\"/dead/job/edit\"] button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    assert_eq!(b.text(".flash-ok").await, "1 job enqueued");
    assert!(fx.entry(SetName::Dead, &j.dead_edit).await.is_none());
    let queued = fx
        .queued(Q_CRITICAL, &j.dead_edit)
        .await
        .expect("on its queue");
    assert_eq!(
        queued.args(),
        &[json!(1), json!("fixed"), json!({"ok": true})]
    );
    b.assert_clean("after edit").await;

    // Quiet the process: its next heartbeat gets the signal.
    b.goto(&fx.url("/busy")).await;
    b.find(&format!(
        "form[action=\"/busy/quiet\"]:has(input[name=identity][value=\"{IDENTITY}\"]) button"
    ))
    .await
    .click()
    .await
    .unwrap();
    assert!(
        b.text(".flash-ok")
            .await
            .starts_with("Quiet sent to 1 process")
    );
    assert_eq!(fx.beat().await, Some(RemoteSignal::Quiet));
    b.assert_clean("after quiet").await;

    // Cancel a running job (its progress is on the row), through its confirm dialog.
    b.goto(&fx.url("/busy")).await;
    let jid = j.running[0].clone();
    let row = format!("tr:has(input[name=jid][value=\"{jid}\"])");
    assert!(
        b.text(&format!("{row} td.progress"))
            .await
            .starts_with("60% card 3 of 5"),
        "the running job's progress"
    );
    b.find(&format!("{row} form[action=\"/jobs/cancel\"] button"))
        .await
        .click()
        .await
        .unwrap();
    b.accept_confirm(&format!(
        "Cancel job {jid}? A running job is told to stop at its process's next heartbeat."
    ))
    .await;
    assert!(
        b.text(".flash-ok").await.starts_with("Cancel sent"),
        "the flash says the job is told"
    );
    assert_eq!(fx.broker.cancelled(&[&jid]).await.unwrap(), vec![true]);
    b.assert_clean("after cancel").await;

    // Pause the periodic entry, then run it now.
    b.goto(&fx.url("/periodic")).await;
    b.find(&format!(
        "form[action=\"/periodic/{PERIODIC}/pause\"] button"
    ))
    .await
    .click()
    .await
    .unwrap();
    assert!(
        b.text(".flash-ok")
            .await
            .starts_with("Periodic entry paused")
    );
    let paused = |fx: &Fixture| {
        let b = fx.broker.clone();
        async move {
            errand_core::broker::Coordination::periodic_list(&*b)
                .await
                .unwrap()[0]
                .paused
        }
    };
    assert!(paused(&fx).await);
    b.find(&format!("form[action=\"/periodic/{PERIODIC}/run\"] button"))
        .await
        .click()
        .await
        .unwrap();
    assert_eq!(b.text(".flash-ok").await, "Job enqueued now.");
    b.assert_clean("after periodic actions").await;

    b.close().await;
    eprintln!("actions test: {:?}", started.elapsed());
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_refused_and_change_nothing() {
    require_browser();
    let _one = exclusive().await;
    let started = Instant::now();
    let fx = Fixture::new().await;
    let dead_before = fx
        .admin
        .set_page(SetRange {
            set: SetName::Dead,
            offset: 0,
            limit: 100,
            order: Default::default(),
        })
        .await
        .unwrap();
    let key = fx.key(SetName::Dead, &fx.jobs.dead_plain).await;
    let form = |token: Option<&str>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair("key", &key);
        if let Some(t) = token {
            s.append_pair("_csrf", t);
        }
        s.finish()
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |cookie: Option<String>, body: String| {
        let mut r = http
            .post(fx.url("/dead/job/delete"))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        if let Some(c) = cookie {
            r = r.header(reqwest::header::COOKIE, c);
        }
        r.send()
    };

    // No session, no token.
    let r = post(None, form(None)).await.unwrap();
    assert_eq!(r.status(), 403);
    // A session (from a page) but no token, and a wrong token.
    let page = http.get(fx.url("/dead")).send().await.unwrap();
    let cookie = page
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("errand_session="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string();
    let html = page.text().await.unwrap();
    let token = scraper::Html::parse_document(&html)
        .select(&scraper::Selector::parse("input[name=_csrf]").unwrap())
        .next()
        .and_then(|i| i.value().attr("value").map(str::to_string))
        .expect("the page's CSRF token");
    let r = post(Some(cookie.clone()), form(None)).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("missing CSRF token"));
    let r = post(Some(cookie.clone()), form(Some(&"0".repeat(64))))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Another session's token.
    let r = post(None, form(Some(&token))).await.unwrap();
    assert_eq!(r.status(), 403);
    // The JSON API the same way.
    let r = http
        .post(fx.url("/api/dead/job/delete"))
        .header(reqwest::header::COOKIE, cookie.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json!({"key": key}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let dead_after = fx
        .admin
        .set_page(SetRange {
            set: SetName::Dead,
            offset: 0,
            limit: 100,
            order: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(dead_after, dead_before, "nothing changed");

    // The browser: fetch() POSTs from the page itself, same origin, with its session cookie.
    let b = Browser::launch().await;
    b.goto(&fx.url("/dead")).await;
    let status = b
        .js(
            "return fetch('/dead/job/delete', {method: 'POST', redirect: 'manual', \
             body: new URLSearchParams({key: arguments[0]})}).then((r) => r.status);",
            vec![json!(key)],
        )
        .await;
    assert_eq!(status, 403, "a fetch POST without the token");
    let status = b
        .js(
            "return fetch('/dead/job/delete', {method: 'POST', redirect: 'manual', \
             headers: {'X-CSRF-Token': 'f'.repeat(64)}, \
             body: new URLSearchParams({key: arguments[0]})}).then((r) => r.status);",
            vec![json!(key)],
        )
        .await;
    assert_eq!(status, 403, "a fetch POST with a wrong token");
    let _ = b.console().await; // the two refused requests are logged as failed loads
    b.assert_no_dialog("after the refused fetches").await;
    let dead_after = fx
        .admin
        .set_page(SetRange {
            set: SetName::Dead,
            offset: 0,
            limit: 100,
            order: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(dead_after, dead_before, "nothing changed");

    // The same requests with the token do go through: it was the token that was missing.
    let r = post(Some(cookie), form(Some(&token))).await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(fx.entry(SetName::Dead, &fx.jobs.dead_plain).await.is_none());
    let other = fx.key(SetName::Dead, &fx.jobs.dead_xss).await;
    let landed = b
        .js(
            "const token = document.querySelector('input[name=_csrf]').value; \
             return fetch('/dead/job/delete', {method: 'POST', headers: {'X-CSRF-Token': token}, \
             body: new URLSearchParams({key: arguments[0]})}).then((r) => [r.status, r.url]);",
            vec![json!(other)],
        )
        .await;
    assert_eq!(landed[0], 200, "{landed}");
    assert!(
        landed[1].as_str().unwrap().contains("done=delete"),
        "{landed}"
    );
    assert!(fx.entry(SetName::Dead, &fx.jobs.dead_xss).await.is_none());

    b.close().await;
    eprintln!("csrf test: {:?}", started.elapsed());
}

#[tokio::test]
async fn screenshots_of_every_page_in_light_and_dark_mode() {
    require_browser();
    let _one = exclusive().await;
    let started = Instant::now();
    let fx = Fixture::new().await;
    let b = Browser::launch().await;
    let dir = screenshot_dir();
    let pages = pages(&fx).await;
    let mut backgrounds = Vec::new();
    for theme in ["light", "dark"] {
        if theme == "dark" {
            b.goto(&fx.url("/")).await;
            b.find("#theme-toggle").await.click().await.unwrap();
            let stored = b
                .js("return [document.documentElement.dataset.theme, localStorage.getItem('errand-theme')]", vec![])
                .await;
            assert_eq!(
                stored,
                json!(["dark", "dark"]),
                "the toggle switched to dark"
            );
        }
        for (name, path) in &pages {
            b.goto(&fx.url(path)).await;
            let shown = b
                .js(
                    "return document.documentElement.dataset.theme || 'system'",
                    vec![],
                )
                .await;
            assert_eq!(
                shown,
                if theme == "dark" { "dark" } else { "system" },
                "{name}: theme"
            );
            if *name == "dashboard" {
                // The live chart has connected.
                eventually("the live chart", || async {
                    let state = b
                        .js(
                            "return document.querySelector('.live-status').dataset.state || ''",
                            vec![],
                        )
                        .await;
                    (state == "live").then_some(())
                })
                .await;
            }
            b.assert_clean(&format!("{name} ({theme})")).await;
            let png = b.full_screenshot().await;
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: a PNG");
            let file = dir.join(format!("{name}-{theme}.png"));
            std::fs::write(&file, &png).unwrap();
            if *name == "dashboard" {
                let bg = b
                    .js(
                        "return getComputedStyle(document.body).backgroundColor",
                        vec![],
                    )
                    .await;
                backgrounds.push(bg);
            }
        }
    }
    assert_ne!(
        backgrounds[0], backgrounds[1],
        "dark mode changes the background"
    );
    b.close().await;
    eprintln!(
        "screenshots test: {:?}, {} files in {}",
        started.elapsed(),
        pages.len() * 2,
        dir.display()
    );
}

/// How the dashboard shows job text: bidi controls (U+202E ...) as visible `\u202e` escapes.
fn shown(s: &str) -> String {
    s.replace('\u{202e}', "\\u202e")
}

/// Makes the README's picture (`docs/images/dashboard.png`) from a live workload: a real server
/// on a fresh SQLite file working through a stream of jobs (some fail and retry), the dashboard
/// open long enough for the live chart to fill. Run by hand:
/// `cargo test -p errand-web --test browser readme_picture -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/images/dashboard.png; run by hand"]
async fn readme_picture() {
    use errand::{Client, Job, JobContext, JobError, JobResult, Server};
    use serde::{Deserialize, Serialize};
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Serialize, Deserialize)]
    struct SendInvoice {
        invoice_id: u64,
    }
    impl Job for SendInvoice {
        const NAME: &'static str = "SendInvoice";
        async fn perform(self, _cx: &JobContext) -> JobResult {
            tokio::time::sleep(Duration::from_millis(5 + self.invoice_id % 40)).await;
            if self.invoice_id.is_multiple_of(23) {
                return Err(
                    JobError::retry("SMTP 451: try again later").with_class("Net::SMTPServerBusy")
                );
            }
            Ok(())
        }
    }
    #[derive(Serialize, Deserialize)]
    struct ResizeImage {
        image_id: u64,
    }
    impl Job for ResizeImage {
        const NAME: &'static str = "ResizeImage";
        async fn perform(self, _cx: &JobContext) -> JobResult {
            tokio::time::sleep(Duration::from_millis(20 + self.image_id % 90)).await;
            Ok(())
        }
    }

    require_browser();
    let _one = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = errand::sqlite::SqliteBroker::open(dir.path().join("picture.sqlite"))
        .await
        .unwrap();
    let server = Server::builder(broker.clone())
        .register::<SendInvoice>()
        .register::<ResizeImage>()
        .weighted_queues([("default", 2), ("images", 1)])
        .concurrency(12)
        .heartbeat_interval(Duration::from_secs(1))
        .handle_signals(false)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    let client = Client::new(broker.clone());
    let producer = {
        let client = client.clone();
        tokio::spawn(async move {
            for round in 0u64.. {
                let n = 20 + (round * 7) % 25;
                let _ = client
                    .push_bulk((0..n).map(|i| SendInvoice {
                        invoice_id: round * 100 + i,
                    }))
                    .await;
                let _ = client
                    .push_bulk((0..n / 2).map(|i| ResizeImage {
                        image_id: round * 100 + i,
                    }))
                    .await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let app = errand_web::router(Arc::new(broker.clone()), errand_web::WebConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let b = Browser::launch().await;
    b.goto(&url).await;
    // Let the live chart gather ~20 points (one per 2 s).
    tokio::time::sleep(Duration::from_secs(40)).await;
    let png = b.client.screenshot().await.expect("screenshot");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/images");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("dashboard.png"), png).unwrap();
    b.close().await;
    producer.abort();
    let _ = stop.send(());
    let _ = running.await;
}
