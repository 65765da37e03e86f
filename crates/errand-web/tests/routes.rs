//! Route tests through `tower::ServiceExt::oneshot` on the in-memory reference backend: every
//! page and API route answers with the fixture's figures, job data renders inert (checked in
//! the parsed HTML), state-changing requests need a CSRF token and a same-origin request,
//! parameters are clamped, authentication is enforced, and the actions change the backend.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use errand_core::admin::{Admin, SetName};
use errand_core::broker::JobQueue;
use errand_core::broker::{
    BUILDING, BatchCallback, BatchEvent, BatchOutcome, BatchRecord, FailurePolicy, JobHead,
    NewBatch, WaitingStep,
};
use errand_core::broker::{Coordination, Fleet};
use errand_core::broker::{
    DeadLimits, Enqueue, FetchRequest, Heartbeat, RemoteSignal, ScheduledJob, Settle, WorkEntry,
};
use errand_core::metrics::ClassMetrics;
use errand_core::{Failure, Payload, WireProfile};
use errand_testing::MemoryBroker;
use errand_web::{Auth, WebConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const XSS: [&str; 6] = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "</textarea><script>alert(2)</script>",
    "{{7*7}}",
    "\u{202e}evil",
];

fn payload(class: &str, queue: &str, args: Value) -> Payload {
    let mut p = Payload::new(
        class,
        args.as_array().cloned().unwrap_or_default(),
        queue,
        WireProfile::V7,
    );
    p.stamp_enqueued(WireProfile::V7, errand_core::now() - 30.0);
    p
}

fn failed(mut p: Payload, class: &str, message: &str) -> String {
    let queue = p.queue().to_string();
    p.set("backtrace", true);
    p.record_failure(&Failure {
        class,
        message,
        backtrace: &[
            "app/jobs/x.rb:1:in `perform'".to_string(),
            XSS[0].to_string(),
        ],
        fetched_from: &queue,
        now: errand_core::now(),
        profile: WireProfile::V7,
    });
    p.to_json()
}

/// Puts `raw` into a set through the hot path (push, fetch, settle), as a server would.
async fn put(b: &MemoryBroker, to: Settle) {
    let raw = match &to {
        Settle::Retry { payload, .. }
        | Settle::Scheduled { payload, .. }
        | Settle::Dead { payload, .. } => payload.clone(),
    };
    b.push(&[Enqueue {
        queue: "fixture-tmp".into(),
        payload: raw,
    }])
    .await
    .unwrap();
    let got = b
        .fetch(FetchRequest {
            identity: "fixture",
            queues: &["fixture-tmp".to_string()],
            max: 1,
            wait: Duration::from_millis(10),
        })
        .await
        .unwrap();
    assert!(b.settle(&got[0], &to).await.unwrap());
}

struct Fixture {
    broker: MemoryBroker,
    identity: String,
}

async fn fixture() -> Fixture {
    let b = MemoryBroker::new();
    let now = errand_core::now();
    // Queues: default 3 jobs, mail 2 (one with an XSS class), a queue named with a payload.
    let mut push = Vec::new();
    for i in 0..3 {
        push.push(Enqueue {
            queue: "default".into(),
            payload: payload("Report", "default", json!([i, XSS[1]])).to_json(),
        });
    }
    push.push(Enqueue {
        queue: "mail".into(),
        payload: payload(XSS[0], "mail", json!([XSS[3]])).to_json(),
    });
    push.push(Enqueue {
        queue: "mail".into(),
        payload: payload("Mailer", "mail", json!([42])).to_json(),
    });
    push.push(Enqueue {
        queue: XSS[1].into(),
        payload: payload("Odd", XSS[1], json!([XSS[2]])).to_json(),
    });
    b.push(&push).await.unwrap();
    // Retries: 2 (error messages with payloads); scheduled: 2; dead: 3 (one unreadable).
    for (i, msg) in [XSS[0], XSS[1]].into_iter().enumerate() {
        let p = payload("Charge", "default", json!([i, XSS[4]]));
        put(
            &b,
            Settle::Retry {
                payload: failed(p, "Net::ReadTimeout", msg),
                at: now + 60.0 + i as f64,
            },
        )
        .await;
    }
    for i in 0..2 {
        put(
            &b,
            Settle::Scheduled {
                payload: payload("Reminder", "default", json!([i, XSS[5]])).to_json(),
                at: now + 3600.0 + i as f64,
            },
        )
        .await;
    }
    b.push_scheduled(&[]).await.unwrap();
    for i in 0..2 {
        let p = payload("Import", "default", json!([i, XSS[0]]));
        put(
            &b,
            Settle::Dead {
                payload: failed(p, XSS[0], XSS[3]),
                now: now - 100.0 + i as f64,
                limits: DeadLimits::default(),
            },
        )
        .await;
    }
    put(
        &b,
        Settle::Dead {
            payload: "{not json <script>alert(3)</script>".into(),
            now: now - 50.0,
            limits: DeadLimits::default(),
        },
    )
    .await;
    // A process running one job, written as Ruby Sidekiq 6.4 would (no concurrency field).
    let identity = "web-1:4242:abc".to_string();
    let running = payload("Slow", "default", json!([XSS[0]])).to_json();
    let work = [WorkEntry {
        tid: "t1".into(),
        json: json!({"queue": "default", "payload": running, "run_at": now as i64 - 5}).to_string(),
    }];
    let info = json!({"hostname": "web-1", "pid": 4242, "tag": XSS[1], "concurrency": 10, "queues": ["default", "mail"], "started_at": now - 600.0, "identity": identity, "labels": []}).to_string();
    b.heartbeat(&Heartbeat {
        identity: &identity,
        info: &info,
        busy: 1,
        concurrency: 0,
        beat: now,
        quiet: false,
        rss_kb: 51_200,
        work: &work,
        processed: 120,
        failed: 7,
        cancelled: 2,
        expired: 1,
        ttl: Duration::from_secs(3600),
    })
    .await
    .unwrap();
    let mut m = ClassMetrics::new(XSS[0]);
    for ms in [10, 20, 30, 400] {
        m.record(ms, false);
    }
    m.record(5, true);
    let mut r = ClassMetrics::new("Report");
    r.record(1_000, false);
    b.record_metrics((now / 60.0) as i64, &[m, r])
        .await
        .unwrap();
    Fixture {
        broker: b,
        identity,
    }
}

fn app(f: &Fixture, config: WebConfig) -> Router {
    errand_web::router(Arc::new(f.broker.clone()), config)
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Reply {
    send(
        app,
        Request::get(uri)
            .header(header::ACCEPT, "text/html")
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// A browser session: its cookie and CSRF token, from a first page view.
struct Session {
    cookie: String,
    csrf: String,
}

async fn session(app: &Router) -> Session {
    let r = get(app, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = r.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let doc = scraper::Html::parse_document(&r.body);
    let sel = scraper::Selector::parse("meta[name=csrf-token]").unwrap();
    let csrf = doc
        .select(&sel)
        .next()
        .and_then(|e| e.value().attr("content"))
        .expect("a CSRF field")
        .to_string();
    Session { cookie, csrf }
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

async fn post_form(
    app: &Router,
    s: &Session,
    uri: &str,
    pairs: &[(&str, &str)],
    token: bool,
) -> Reply {
    let mut all = pairs.to_vec();
    if token {
        all.push(("_csrf", &s.csrf));
    }
    send(
        app,
        Request::post(uri)
            .header(header::COOKIE, &s.cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(Body::from(form(&all)))
            .unwrap(),
    )
    .await
}

async fn post_json(app: &Router, s: &Session, uri: &str, body: Value) -> Reply {
    send(
        app,
        Request::post(uri)
            .header(header::COOKIE, &s.cookie)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-csrf-token", &s.csrf)
            .body(Body::from(body.to_string()))
            .unwrap(),
    )
    .await
}

async fn json_of(app: &Router, uri: &str) -> Value {
    let r = send(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

async fn keys(app: &Router, slug: &str) -> Vec<String> {
    json_of(app, &format!("/api/{slug}?per_page=100")).await["page"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Asserts a page has nothing that came from job data: no element, attribute or script that a
/// payload could have injected.
fn assert_inert(uri: &str, r: &Reply) {
    assert_eq!(r.status, StatusCode::OK, "{uri}");
    let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .expect("script-src");
    assert!(script_src.contains("'nonce-"), "{uri}: {csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{uri}: {csp}"
    );
    let doc = scraper::Html::parse_document(&r.body);
    let all = scraper::Selector::parse("*").unwrap();
    for el in doc.select(&all) {
        let v = el.value();
        assert!(
            !["img", "textarea"].contains(&v.name()) || v.attr("src") != Some("x"),
            "{uri}: injected <img>"
        );
        if v.name() == "script" {
            assert!(
                v.attr("src").is_some_and(|s| s.starts_with("/assets/")),
                "{uri}: a script that is not ours: {:?}",
                el.html()
            );
            assert!(el.inner_html().trim().is_empty(), "{uri}: inline script");
        }
        for (name, value) in v.attrs() {
            assert!(
                !name.starts_with("on"),
                "{uri}: event handler attribute {name}"
            );
            if name == "href" || name == "src" || name == "action" {
                assert!(
                    !value.trim_start().to_lowercase().starts_with("javascript:"),
                    "{uri}: javascript: URL in {name}"
                );
            }
        }
    }
    // Only our two script elements, whatever the payloads.
    let scripts = scraper::Selector::parse("script").unwrap();
    assert!(doc.select(&scripts).count() <= 2, "{uri}");
}

#[tokio::test]
async fn every_page_renders_the_fixture_with_job_data_inert() {
    let f = fixture().await;
    let app = app(&f, WebConfig::default());
    let mut pages = vec![
        "/".to_string(),
        "/?days=7".into(),
        "/busy".into(),
        "/queues".into(),
        "/queues/default".into(),
        format!("/queues/{}", enc(XSS[1])),
        "/retries".into(),
        "/scheduled".into(),
        "/dead".into(),
        "/job-metrics".into(),
        "/job-metrics?window=day".into(),
        "/batches".into(),
        // Reflected parameters (CVE-2024-32887 and CVE-2023-1892 style payloads).
        format!("/retries?class={}&q={}", enc(XSS[0]), enc(XSS[1])),
        format!("/dead?error={}&sort={}", enc(XSS[1]), enc(XSS[0])),
        format!("/?days={}", enc(XSS[0])),
        format!(
            "/job-metrics?window={}",
            enc("\"><script>alert(1)</script>")
        ),
        format!("/dead?done={}&n={}", enc(XSS[0]), enc(XSS[1])),
    ];
    for slug in ["retries", "scheduled", "dead"] {
        for key in keys(&app, slug).await {
            pages.push(format!("/{slug}/job?key={}", enc(&key)));
        }
    }
    for uri in &pages {
        let r = get(&app, uri).await;
        assert_inert(uri, &r);
    }
    // The payloads are there, as text.
    let dead = get(&app, "/dead").await;
    assert!(dead.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        dead.body
            .contains("{not json &lt;script&gt;alert(3)&lt;/script&gt;")
    );
    assert!(dead.body.contains("3 jobs"), "dead total");
    let busy = get(&app, "/busy").await;
    assert!(busy.body.contains("web-1:4242"));
    assert!(
        busy.body.contains("1 / 10"),
        "concurrency read from info when the hash has none"
    );
    let queues = get(&app, "/queues").await;
    assert!(
        queues
            .body
            .contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;")
    );
    let metrics = get(&app, "/job-metrics").await;
    assert!(
        metrics
            .body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
}

#[tokio::test]
async fn the_api_reports_the_fixture() {
    let f = fixture().await;
    let app = app(&f, WebConfig::default());
    let stats = json_of(&app, "/api/stats").await;
    let s = &stats["stats"];
    assert_eq!(s["processed"], 120);
    assert_eq!(s["failed"], 7);
    assert_eq!(s["enqueued"], 6);
    assert_eq!(s["retries"], 2);
    assert_eq!(s["scheduled"], 2);
    assert_eq!(s["dead"], 3);
    assert_eq!(s["busy"], 1);
    assert_eq!(s["processes"], 1);
    assert_eq!(stats["backend"]["kind"], "memory");

    let queues = json_of(&app, "/api/queues").await;
    let default = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap()
        .clone();
    assert_eq!(default["size"], 3);
    assert!(default["latency"].as_f64().unwrap() >= 29.0, "{default}");

    let q = json_of(&app, "/api/queues/default?per_page=2").await;
    assert_eq!(q["size"], 3);
    assert_eq!(q["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(q["jobs"][0]["job"]["args"][0], 0, "next to run first");

    let retries = json_of(&app, "/api/retries").await;
    assert_eq!(retries["page"]["total"], 2);
    assert_eq!(
        retries["page"]["entries"][0]["job"]["error_class"],
        "Net::ReadTimeout"
    );
    let filtered = json_of(&app, &format!("/api/retries?error={}", enc("img src"))).await;
    assert_eq!(filtered["page"]["total"], 1);
    let dead = json_of(&app, "/api/dead").await;
    assert_eq!(dead["page"]["total"], 3);
    assert!(
        dead["page"]["entries"][0]["score"].as_f64()
            >= dead["page"]["entries"][1]["score"].as_f64(),
        "dead: newest first"
    );

    let key = retries["page"]["entries"][0]["key"].as_str().unwrap();
    let job = json_of(&app, &format!("/api/retries/job?key={}", enc(key))).await;
    assert_eq!(job["backtrace"][0], "app/jobs/x.rb:1:in `perform'");

    let busy = json_of(&app, "/api/busy").await;
    assert_eq!(busy["processes"][0]["hostname"], "web-1");
    assert_eq!(busy["processes"][0]["concurrency"], 10);
    assert_eq!(busy["work"][0]["job"]["class"], "Slow");

    let metrics = json_of(&app, "/api/metrics?window=hour").await;
    let rows = metrics["classes"].as_array().unwrap();
    assert_eq!(rows[0]["class"], XSS[0], "busiest first");
    assert_eq!(rows[0]["executions"], 5);
    assert_eq!(rows[0]["failures"], 1);
    assert_eq!(
        rows[0]["p50_ms"], 30,
        "runs 10, 20, 30, 400: the median (20 ms) is in the bucket below 30 (ms < bound)"
    );
    assert_eq!(rows[0]["p99_ms"], 500);

    let history = json_of(&app, "/api/history?days=7").await;
    let days = history["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days[6]["processed"], 120);

    let prom = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(prom.status, StatusCode::OK);
    for line in [
        "errand_jobs_processed_total 120",
        "errand_jobs_failed_total 7",
        "errand_jobs_cancelled_total 2",
        "errand_jobs_expired_total 1",
        "errand_queue_size{queue=\"default\"} 3",
        "errand_set_size{set=\"dead\"} 3",
        "errand_busy_workers 1",
        "errand_job_duration_seconds_bucket{class=\"Report\",le=\"1.1\"} 1",
        "errand_job_duration_seconds_count{class=\"Report\"} 1",
        "errand_job_executions_total{class=\"<script>alert(1)</script>\"} 5",
    ] {
        assert!(prom.body.contains(line), "missing {line}:\n{}", prom.body);
    }
    assert!(
        prom.body
            .contains("errand_queue_size{queue=\"\\\"><img src=x onerror=alert(1)>\"} 1")
    );
}

#[tokio::test]
async fn every_openapi_path_is_served() {
    let f = fixture().await;
    let app = app(&f, WebConfig::default());
    let doc = json_of(&app, "/api/openapi.json").await;
    let key = keys(&app, "dead").await[0].clone();
    f.broker
        .batch_create(&new_batch("openapi-batch", "", &[]))
        .await
        .unwrap();
    let mut gets = 0;
    let mut posts = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{name}", "default")
            .replace("{action}", "quiet")
            .replace("{jid}", "no-such-jid")
            .replace("{bid}", "openapi-batch");
        if ops.get("get").is_some() {
            let uri = if uri.ends_with("/job") {
                let slug = uri.trim_start_matches("/api/").trim_end_matches("/job");
                let k = keys(&app, slug).await.first().cloned().unwrap_or_default();
                format!("{uri}?key={}", enc(&k))
            } else {
                uri.clone()
            };
            let resp = app
                .clone()
                .oneshot(Request::get(&uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            // The stream never ends; its status and type are enough.
            assert_eq!(resp.status(), StatusCode::OK, "GET {uri}");
            gets += 1;
        }
        if ops.get("post").is_some() {
            // Without a CSRF token every state-changing route is refused.
            let r = send(
                &app,
                Request::post(&uri)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        json!({"key": key, "action": "delete", "identity": "all"}).to_string(),
                    ))
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "POST {uri}");
            posts += 1;
        }
    }
    assert!(
        gets >= 14 && posts >= 11,
        "{gets} GET and {posts} POST routes"
    );
    // Nothing changed.
    assert_eq!(f.broker.set("dead").len(), 3);
    assert!(f.broker.paused_queues().await.unwrap().is_empty());
}

#[tokio::test]
async fn state_changing_requests_need_a_token_and_the_same_origin() {
    let f = fixture().await;
    let app = app(&f, WebConfig::default());
    let s = session(&app).await;
    let key = keys(&app, "dead").await[0].clone();
    let before = f.broker.set("dead");

    let r = post_form(&app, &s, "/dead/job/delete", &[("key", &key)], false).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no token");
    let r = post_form(
        &app,
        &s,
        "/dead/job/delete",
        &[("key", &key), ("_csrf", "0000")],
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "wrong token");
    // A token from another session does not fit this one.
    let other = session(&app).await;
    let r = post_form(
        &app,
        &s,
        "/dead/job/delete",
        &[("key", &key), ("_csrf", &other.csrf)],
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "another session's token");
    // A valid token on a cross-site request is refused too.
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://127.0.0.2:7878"),
    ] {
        let r = send(
            &app,
            Request::post("/dead/job/delete")
                .header(header::HOST, "127.0.0.1:7878")
                .header(header::COOKIE, &s.cookie)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(name, value)
                .body(Body::from(form(&[("key", &key), ("_csrf", &s.csrf)])))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {value}");
    }
    // Other methods are not accepted at all.
    let r = send(
        &app,
        Request::delete("/dead/job/delete")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(r.status == StatusCode::METHOD_NOT_ALLOWED, "{}", r.status);
    assert_eq!(f.broker.set("dead"), before, "nothing changed");

    // The same request done right works.
    let r = post_form(
        &app,
        &s,
        "/dead/job/delete",
        &[("key", &key), ("return_to", "/dead")],
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.headers[header::LOCATION], "/dead?done=delete&n=1");
    assert_eq!(f.broker.set("dead").len(), 2);
    // An open redirect is not followed.
    let key = keys(&app, "dead").await[0].clone();
    let r = post_form(
        &app,
        &s,
        "/dead/job/delete",
        &[("key", &key), ("return_to", "//evil.example/x")],
        true,
    )
    .await;
    assert_eq!(r.headers[header::LOCATION], "/dead?done=delete&n=1");
    // Every GET route is free of side effects: walking them all changes nothing.
    let snapshot = (
        f.broker.set("retry"),
        f.broker.set("schedule"),
        f.broker.set("dead"),
        f.broker.queue("default"),
    );
    for uri in [
        "/",
        "/busy",
        "/queues",
        "/queues/default",
        "/retries",
        "/scheduled",
        "/dead",
        "/job-metrics",
        "/metrics",
        "/api/stats",
        "/api/busy",
        "/api/queues",
        "/api/retries",
        "/api/dead",
        "/api/metrics",
        "/login",
        "/busy/quiet",
        "/dead/all",
        "/queues/default/clear",
    ] {
        let _ = get(&app, uri).await;
    }
    assert_eq!(
        snapshot,
        (
            f.broker.set("retry"),
            f.broker.set("schedule"),
            f.broker.set("dead"),
            f.broker.queue("default")
        )
    );
    assert!(f.broker.paused_queues().await.unwrap().is_empty());
}

#[tokio::test]
async fn actions_change_the_backend() {
    let f = fixture().await;
    let app = app(&f, WebConfig::default());
    let s = session(&app).await;

    // Retry now from the retry set: onto its queue, retry_count taken down by one.
    let key = keys(&app, "retries").await[0].clone();
    let r = post_json(&app, &s, "/api/retries/job/retry", json!({"key": key})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(f.broker.set("retry").len(), 1);
    let moved = Payload::parse(&f.broker.queue("default")[3]).unwrap();
    assert_eq!(moved.class(), "Charge");
    assert_eq!(moved.retry_count(), Some(0));
    // The same key again: gone.
    let r = post_json(&app, &s, "/api/retries/job/retry", json!({"key": key})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Kill a scheduled job; run the other now.
    let sched = keys(&app, "scheduled").await;
    let r = post_json(
        &app,
        &s,
        "/api/scheduled/job/kill",
        json!({"key": sched[0]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(f.broker.set("dead").len(), 4);
    let r = post_form(
        &app,
        &s,
        "/scheduled/job/retry",
        &[("key", &sched[1])],
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(f.broker.set("schedule").is_empty());
    assert_eq!(f.broker.queue_len("default"), 5);

    // Retry a dead job with edited arguments; a bad edit is refused with the reason.
    let dead = json_of(&app, "/api/dead").await;
    let import = dead["page"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["job"]["class"] == "Import")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post_form(
        &app,
        &s,
        "/dead/job/edit",
        &[("key", &import), ("args", "{\"not\": \"an array\"}")],
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("must be a JSON array"));
    let r = post_form(
        &app,
        &s,
        "/dead/job/edit",
        &[("key", &import), ("args", "[7, \"fixed\"]")],
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let edited = Payload::parse(f.broker.queue("default").last().unwrap()).unwrap();
    assert_eq!(edited.class(), "Import");
    assert_eq!(edited.args(), &[json!(7), json!("fixed")]);

    // Bulk: delete two dead jobs by key.
    let dead_keys = keys(&app, "dead").await;
    let n = f.broker.set("dead").len();
    let r = post_json(
        &app,
        &s,
        "/api/dead/bulk",
        json!({"action": "delete", "keys": [dead_keys[0], dead_keys[1]]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["count"], 2);
    assert_eq!(f.broker.set("dead").len(), n - 2);

    // All, with a filter: only the matching ones.
    let r = post_json(
        &app,
        &s,
        "/api/dead/all",
        json!({"action": "delete", "class": "(unreadable)"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        f.broker
            .set("dead")
            .iter()
            .all(|(_, raw)| Payload::parse(raw).is_ok())
    );

    // Queues: pause, resume, delete one job, clear.
    let r = post_form(&app, &s, "/queues/mail/pause", &[], true).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(f.broker.paused_queues().await.unwrap(), vec!["mail"]);
    let r = post_json(&app, &s, "/api/queues/mail/resume", json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(f.broker.paused_queues().await.unwrap().is_empty());
    let victim = f.broker.queue("mail")[0].clone();
    let r = post_form(&app, &s, "/queues/mail/delete", &[("raw", &victim)], true).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(f.broker.queue_len("mail"), 1);
    let r = post_json(&app, &s, "/api/queues/mail/clear", json!({})).await;
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["count"], 1);
    assert_eq!(f.broker.queue_len("mail"), 0);

    // Busy: quiet the process; its next heartbeat gets the signal.
    let r = post_form(&app, &s, "/busy/quiet", &[("identity", &f.identity)], true).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let signal = f
        .broker
        .heartbeat(&Heartbeat {
            identity: &f.identity,
            info: "{}",
            busy: 0,
            concurrency: 10,
            beat: errand_core::now(),
            quiet: false,
            rss_kb: 0,
            work: &[],
            processed: 0,
            failed: 0,
            cancelled: 0,
            expired: 0,
            ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
    assert_eq!(signal, Some(RemoteSignal::Quiet));

    // Retry all in the retry set moves every entry once.
    let r = post_json(&app, &s, "/api/retries/all", json!({"action": "retry"})).await;
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["count"], 1);
    assert!(f.broker.set("retry").is_empty());
}

#[tokio::test]
async fn parameters_are_clamped() {
    let f = fixture().await;
    let app = app(&f, WebConfig::default());
    let history = json_of(&app, "/api/history?days=922337").await;
    assert_eq!(history["days"].as_array().unwrap().len(), 180);
    let history = json_of(&app, "/api/history?days=-1").await;
    assert_eq!(history["days"].as_array().unwrap().len(), 1);
    let page = json_of(&app, "/api/dead?per_page=1000000000&page=-5").await;
    assert_eq!(page["page"]["per_page"], 100);
    assert_eq!(page["page"]["page"], 1);
    let page = json_of(&app, "/api/dead?page=99999999999999999999").await;
    assert_eq!(page["page"]["entries"].as_array().unwrap().len(), 0);
    // 60 KiB (hyper refuses request lines past 64 KiB with 414 before any handler runs).
    let huge = "x".repeat(60 << 10);
    let started = std::time::Instant::now();
    let r = get(&app, &format!("/retries?class={huge}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        !r.body.contains(&"x".repeat(201)),
        "the filter is cut to 200 characters"
    );
    // Generous: a debug build on a shared machine; the point is no unbounded work.
    assert!(started.elapsed() < Duration::from_secs(5));
    // The stream interval has a floor of 2 s: the first event comes at once, the next only
    // after the floor (checked by reading two events).
    let resp = app
        .clone()
        .oneshot(
            Request::get("/api/stream?interval=0")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body();
    let first = std::time::Instant::now();
    let mut seen = String::new();
    while seen.matches("event: stats").count() < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(
        first.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        first.elapsed()
    );
    assert!(seen.contains("\"processed\":120"));
}

#[tokio::test]
async fn authentication_is_enforced() {
    let f = fixture().await;
    // Token: pages redirect to the sign-in form, the API answers 401, a bearer header works.
    let token = "a-long-enough-test-token";
    let app = app(&f, WebConfig::default().auth(Auth::Token(token.into())));
    let r = get(&app, "/dead").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers[header::LOCATION], "/login");
    let r = send(
        &app,
        Request::get("/api/stats").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &app,
        Request::get("/api/stats")
            .header(header::AUTHORIZATION, "Bearer wrong-token-wrong-token")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &app,
        Request::get("/api/stats")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // A bearer-authenticated script needs no CSRF token (browsers never send that header by
    // themselves), but a cross-site one is still refused.
    let key = keys_with(&app, token, "dead").await[0].clone();
    let r = send(
        &app,
        Request::post("/api/dead/job/delete")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"key": key}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The sign-in form: a wrong token is refused, the right one sets an HttpOnly,
    // SameSite=Strict cookie that then opens the pages.
    let login = get(&app, "/login").await;
    assert_eq!(login.status, StatusCode::OK);
    let cookie = login.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let doc = scraper::Html::parse_document(&login.body);
    let csrf = doc
        .select(&scraper::Selector::parse("input[name=_csrf]").unwrap())
        .next()
        .unwrap()
        .value()
        .attr("value")
        .unwrap()
        .to_string();
    let s = Session { cookie, csrf };
    let r = post_form(&app, &s, "/login", &[("token", "nope")], true).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post_form(&app, &s, "/login", &[("token", token)], true).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let set = r.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let auth_cookie = set.split(';').next().unwrap();
    let r = send(
        &app,
        Request::get("/dead")
            .header(header::COOKIE, format!("{}; {auth_cookie}", s.cookie))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains(token), "the token is never rendered");

    // Basic: 401 with a challenge, then the right credentials work.
    let app = errand_web::router(
        Arc::new(f.broker.clone()),
        WebConfig::default().auth(Auth::Basic {
            user: "ops".into(),
            password: "correct horse".into(),
        }),
    );
    let r = get(&app, "/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    use base64::Engine;
    for (creds, want) in [
        ("ops:wrong", StatusCode::UNAUTHORIZED),
        ("ops:correct horse", StatusCode::OK),
    ] {
        let r = send(
            &app,
            Request::get("/")
                .header(
                    header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(creds)
                    ),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, want, "{creds}");
    }
}

async fn keys_with(app: &Router, token: &str, slug: &str) -> Vec<String> {
    let r = send(
        app,
        Request::get(format!("/api/{slug}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["page"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_router_mounts_under_a_path() {
    let f = fixture().await;
    let app = Router::new().nest(
        "/errand",
        errand_web::router(
            Arc::new(f.broker.clone()),
            WebConfig::default().base_path("/errand/"),
        ),
    );
    let r = get(&app, "/errand/dead").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("href=\"/errand/assets/app.css\""));
    assert!(r.body.contains("action=\"/errand/dead/bulk\""));
    let css = send(
        &app,
        Request::get("/errand/assets/app.css")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let _ = SetName::Dead;
    let _ = ScheduledJob {
        at: 0.0,
        payload: String::new(),
    };
    let _: Option<&dyn Admin> = None;
}

/// The Periodic page lists declared entries (their data inert) and pauses, resumes and runs
/// them; the API does the same and answers 404 for an unknown entry or action.
#[tokio::test]
async fn the_periodic_page_lists_pauses_resumes_and_runs_entries() {
    use errand_core::broker::{Coordination, PeriodicEntry};
    let f = fixture().await;
    let entry = |name: &str| PeriodicEntry {
        name: name.into(),
        spec: "0 3 * * *".into(),
        zone: "Europe/Berlin".into(),
        queue: "reports".into(),
        template: r#"{"retry":true,"queue":"reports","args":[7],"class":"NightlyReport"}"#.into(),
        missed: "skip".into(),
    };
    f.broker
        .periodic_upsert(&[entry("nightly"), entry(XSS[1])], errand_core::now())
        .await
        .unwrap();
    let app = app(&f, WebConfig::default());
    let r = get(&app, "/periodic").await;
    assert_inert("/periodic", &r);
    for text in [
        "nightly",
        "0 3 * * *",
        "Europe/Berlin",
        "NightlyReport",
        "Run now",
        "active",
    ] {
        assert!(
            r.body.contains(text),
            "{text} missing from the Periodic page"
        );
    }
    let api = json_of(&app, "/api/periodic").await;
    let nightly = api["periodic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "nightly")
        .unwrap()
        .clone();
    assert!(nightly["next_run"].as_f64().unwrap() > errand_core::now());
    assert_eq!(nightly["paused"], false);

    let s = session(&app).await;
    let paused = |f: &Fixture| {
        let b = f.broker.clone();
        async move {
            b.periodic_list()
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.entry.name == "nightly")
                .unwrap()
                .paused
        }
    };
    let r = post_form(&app, &s, "/periodic/nightly/pause", &[], true).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let to = r.headers[header::LOCATION].to_str().unwrap().to_string();
    assert!(to.contains("done=periodic-paused"), "{to}");
    assert!(paused(&f).await);
    assert!(get(&app, &to).await.body.contains("Periodic entry paused"));
    assert!(get(&app, "/periodic").await.body.contains("paused"));
    // Without the token nothing changes.
    let r = post_form(&app, &s, "/periodic/nightly/resume", &[], false).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(paused(&f).await);
    let r = post_json(&app, &s, "/api/periodic/nightly/resume", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!paused(&f).await);

    let r = post_form(&app, &s, "/periodic/nightly/run", &[], true).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let queued = f.broker.queue("reports");
    assert_eq!(queued.len(), 1);
    let job = Payload::parse(&queued[0]).unwrap();
    assert_eq!(job.class(), "NightlyReport");
    assert_eq!(job.str("errand_periodic"), Some("nightly"));

    let r = post_form(&app, &s, "/periodic/ghost/run", &[], true).await;
    let to = r.headers[header::LOCATION].to_str().unwrap().to_string();
    assert!(to.contains("done=periodic-gone"), "{to}");
    let r = post_json(&app, &s, "/api/periodic/ghost/pause", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post_json(&app, &s, "/api/periodic/nightly/explode", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(f.broker.queue("reports").len(), 1);
}

/// DNS rebinding (issue 13, item 15): without authentication only loopback host names are
/// answered (a state-changing POST from the rebinding page, same-origin by its own Host and
/// Origin, included); configured hosts are answered too, and once configured they bind even
/// with authentication.
#[tokio::test]
async fn only_allowed_host_names_are_answered() {
    let f = fixture().await;
    let with_host = |uri: &str, host: &str| {
        Request::get(uri)
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap()
    };
    let open = app(&f, WebConfig::default());
    for host in [
        "localhost:7878",
        "127.0.0.1:7878",
        "[::1]:7878",
        "LOCALHOST",
        "app.localhost",
    ] {
        let r = send(&open, with_host("/api/stats", host)).await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
    }
    let r = send(&open, with_host("/", "evil.example")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("DNS rebinding"), "{}", r.body);
    let s = session(&open).await;
    let r = send(
        &open,
        Request::post("/queues/default/clear")
            .header(header::HOST, "evil.example:7878")
            .header(header::ORIGIN, "http://evil.example:7878")
            .header(header::COOKIE, &s.cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&[("_csrf", &s.csrf)])))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!f.broker.queue("default").is_empty(), "nothing cleared");

    let named = app(&f, WebConfig::default().allow_host("errand.internal"));
    let r = send(&named, with_host("/api/stats", "errand.internal:443")).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&named, with_host("/api/stats", "evil.example")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // With authentication and no hosts configured, any name is answered (the token is the
    // guard); with hosts configured, they bind.
    let authed = app(&f, WebConfig::default().auth(Auth::Token("t0ken".into())));
    let r = send(
        &authed,
        Request::get("/api/stats")
            .header(header::HOST, "jobs.example.com")
            .header(header::AUTHORIZATION, "Bearer t0ken")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let authed = app(
        &f,
        WebConfig::default()
            .auth(Auth::Token("t0ken".into()))
            .allow_host("jobs.example.com"),
    );
    let r = send(
        &authed,
        Request::get("/api/stats")
            .header(header::HOST, "evil.example")
            .header(header::AUTHORIZATION, "Bearer t0ken")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// A kill from the dashboard trims the dead set to the configured limits, not the default
/// 10,000 (issue 13, item 14).
#[tokio::test]
async fn a_kill_trims_the_dead_set_to_the_configured_limits() {
    let f = fixture().await;
    let dead_before = f.broker.set("dead").len();
    let moving = f.broker.set("retry").len() + f.broker.set("schedule").len();
    assert!(dead_before + moving > 4, "the fixture has enough to trim");
    let app = app(
        &f,
        WebConfig::default().dead_limits(DeadLimits {
            max_jobs: 4,
            max_age: Duration::from_secs(365 * 86_400),
        }),
    );
    let s = session(&app).await;
    for slug in ["retries", "scheduled"] {
        let r = post_json(
            &app,
            &s,
            &format!("/api/{slug}/all"),
            json!({"action": "kill"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(f.broker.set("dead").len(), 4, "kept the 4 newest");
}

/// At most `max_streams` live-update streams at once; one more is answered 503 with
/// Retry-After, and a closed stream frees its place (issue 13, item 17).
#[tokio::test]
async fn live_update_streams_are_capped() {
    let f = fixture().await;
    let app = app(&f, WebConfig::default().max_streams(2));
    let open = || async {
        app.clone()
            .oneshot(Request::get("/api/stream").body(Body::empty()).unwrap())
            .await
            .unwrap()
    };
    let first = open().await;
    let second = open().await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = open().await;
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(third.headers().contains_key(header::RETRY_AFTER));
    drop(first);
    assert_eq!(
        open().await.status(),
        StatusCode::OK,
        "a closed stream frees its place"
    );
    drop(second);
}

/// Failed sign-ins are limited per client address: after `max_failed_logins` in a minute,
/// the form and bearer or basic attempts are answered 429 with Retry-After, even with the
/// right token (issue 13, item 17).
#[tokio::test]
async fn failed_sign_ins_are_rate_limited() {
    let f = fixture().await;
    let app = app(
        &f,
        WebConfig::default()
            .auth(Auth::Token("right-token".into()))
            .max_failed_logins(3),
    );
    let page = get(&app, "/login").await;
    let cookie = page.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = scraper::Html::parse_document(&page.body)
        .select(&scraper::Selector::parse("input[name=_csrf]").unwrap())
        .next()
        .unwrap()
        .value()
        .attr("value")
        .unwrap()
        .to_string();
    let s = Session { cookie, csrf };
    for _ in 0..2 {
        let r = post_form(&app, &s, "/login", &[("token", "wrong")], true).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.body.contains("That token is not right"));
    }
    let bearer = |token: &str| {
        Request::get("/api/stats")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        send(&app, bearer("wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = post_form(&app, &s, "/login", &[("token", "wrong")], true).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        send(&app, bearer("right-token")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "blocked for the minute, right token or not"
    );
    // Other routes without credentials are unaffected (they are not sign-ins).
    let r = send(&app, Request::get("/login").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Cancel from the Busy page and the API: a running job is told (its process's next beat
/// reads the mark), a queued one is removed, an unknown one is not found; the Busy page shows
/// a running job's progress, escaped; without the CSRF token nothing is cancelled.
#[tokio::test]
async fn jobs_are_cancelled_and_progress_is_shown() {
    let f = fixture().await;
    let app = app(&f, WebConfig::default());
    let s = session(&app).await;
    // The running job reports progress (as a server's beat writes it).
    let running = payload("Slow", "default", json!([1])).to_json();
    let running_jid = Payload::parse(&running).unwrap().jid().to_string();
    let work = [WorkEntry {
        tid: "t1".into(),
        json: json!({"queue": "default", "payload": running, "run_at": errand_core::now() as i64,
                     "errand_progress": {"percent": 40, "message": XSS[0]}})
        .to_string(),
    }];
    f.broker
        .heartbeat(&Heartbeat {
            identity: &f.identity,
            info: "{}",
            busy: 1,
            concurrency: 10,
            beat: errand_core::now(),
            quiet: false,
            rss_kb: 0,
            work: &work,
            processed: 0,
            failed: 0,
            cancelled: 0,
            expired: 0,
            ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
    let busy = send(&app, Request::get("/busy").body(Body::empty()).unwrap()).await;
    assert!(busy.body.contains("40% "), "{}", busy.body);
    assert!(!busy.body.contains(XSS[0]), "the message is escaped");
    assert!(
        busy.body
            .contains(&format!("name=\"jid\" value=\"{running_jid}\"")),
        "a Cancel button for the running job"
    );
    let api = json_of(&app, "/api/busy").await;
    assert_eq!(api["work"][0]["progress"]["percent"], 40, "{api}");

    // Without the token: refused, nothing marked.
    let r = post_form(&app, &s, "/jobs/cancel", &[("jid", &running_jid)], false).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        f.broker.cancelled(&[&running_jid]).await.unwrap(),
        vec![false]
    );

    let r = post_form(&app, &s, "/jobs/cancel", &[("jid", &running_jid)], true).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let to = r.headers[header::LOCATION].to_str().unwrap().to_string();
    assert!(to.contains("done=cancel-running"), "{to}");
    let shown = send(&app, Request::get(&to).body(Body::empty()).unwrap()).await;
    assert!(shown.body.contains("Cancel sent"), "{}", shown.body);
    assert_eq!(
        f.broker.cancelled(&[&running_jid]).await.unwrap(),
        vec![true]
    );

    let queued = f.broker.queue("default")[0].clone();
    let queued_jid = Payload::parse(&queued).unwrap().jid().to_string();
    let r = post_json(
        &app,
        &s,
        &format!("/api/jobs/{queued_jid}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (body["cancelled"].as_str(), body["queue"].as_str()),
        (Some("queued"), Some("default")),
        "{body}"
    );
    assert_eq!(f.broker.queue_len("default"), 2);
    let r = post_json(&app, &s, "/api/jobs/no-such-jid/cancel", json!({})).await;
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["cancelled"], "not_found", "{body}");

    // A kept result, through the API.
    let none = json_of(&app, &format!("/api/jobs/{queued_jid}/result")).await;
    assert_eq!(none["result"], Value::Null, "{none}");
    f.broker
        .result_put(&queued_jid, r#"{"rows":7}"#, Duration::from_secs(60))
        .await
        .unwrap();
    let kept = json_of(&app, &format!("/api/jobs/{queued_jid}/result")).await;
    assert_eq!(kept["result"]["rows"], 7, "{kept}");
}

/// A batch to create in these tests: `description`, a `complete` callback, the given waiting
/// steps (a workflow when there are any).
fn new_batch<'a>(bid: &'a str, description: &'a str, waiting: &'a [WaitingStep]) -> NewBatch<'a> {
    NewBatch {
        bid,
        parent: None,
        description,
        callbacks: &[],
        keep: Duration::from_secs(3600),
        waiting,
        policy: FailurePolicy::CancelAll,
        workflow: None,
    }
}

/// Adds jobs of `class` with arguments `args` to batch `bid` (pushed onto `queue`); their jids.
async fn add_jobs(b: &MemoryBroker, bid: &str, queue: &str, args: &[Value]) -> Vec<String> {
    let jobs: Vec<Payload> = args
        .iter()
        .map(|a| payload("BatchJob", queue, json!([a])))
        .collect();
    let jids: Vec<String> = jobs.iter().map(|p| p.jid().to_string()).collect();
    let refs: Vec<&str> = jids.iter().map(String::as_str).collect();
    let now: Vec<Enqueue> = jobs
        .iter()
        .map(|p| Enqueue {
            queue: queue.into(),
            payload: p.to_json(),
        })
        .collect();
    b.batch_add(bid, &refs, &now, &[]).await.unwrap();
    jids
}

async fn record(b: &MemoryBroker, bid: &str, member: &str, outcome: BatchOutcome) {
    b.batch_record(BatchRecord {
        bid,
        member,
        outcome,
        enqueued_at: "1700000000.0",
    })
    .await
    .unwrap();
}

/// The text of the first element `selector` matches in `html`.
fn text_of(html: &str, selector: &str) -> Option<String> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse(selector).unwrap();
    doc.select(&sel)
        .next()
        .map(|e| e.text().collect::<String>().trim().to_string())
}

/// The Batches page lists batches newest first with their counts, progress and state (their
/// descriptions inert); a batch's page shows its status, its parent and its members by state,
/// each list paged on its own, dead and failed jobs linked to their sets; the API gives the
/// same; a batch that does not exist is a 404; links follow the mount point.
#[tokio::test]
async fn the_batches_pages_show_counts_members_and_children() {
    let f = fixture().await;
    let b = &f.broker;
    let app = app(&f, WebConfig::default());
    let empty = get(&app, "/batches").await;
    assert_inert("/batches", &empty);
    assert!(empty.body.contains("No batches"), "{}", empty.body);
    assert!(
        text_of(&empty.body, "a.nav-link.active[href=\"/batches\"]").as_deref() == Some("Batches"),
        "Batches is in the nav, and active"
    );

    b.batch_create(&NewBatch {
        callbacks: &[BatchCallback {
            event: BatchEvent::Complete,
            job: JobHead::new("cb", r#"{"class":"Done","args":[]}"#).unwrap(),
        }],
        ..new_batch("imports", XSS[0], &[])
    })
    .await
    .unwrap();
    let jids = add_jobs(b, "imports", "batch-q", &[json!(1), json!(2), json!(3)]).await;
    b.batch_create(&NewBatch {
        parent: Some("imports"),
        ..new_batch("imports-child", XSS[1], &[])
    })
    .await
    .unwrap();
    record(b, "imports", BUILDING, BatchOutcome::Succeeded).await;
    record(b, "imports", &jids[0], BatchOutcome::Succeeded).await;
    record(b, "imports", &jids[1], BatchOutcome::Failed).await;
    record(b, "imports", &jids[2], BatchOutcome::Died).await;
    // imports: 4 members (3 jobs and the child); 1 succeeded, 1 dead, 2 pending (1 failed).

    let list = get(&app, "/batches").await;
    assert_inert("/batches", &list);
    assert!(list.body.contains("2 batches"), "{}", list.body);
    assert!(list.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let row = |bid: &str| format!("tr:has(> td > a[href=\"/batches/{bid}\"])");
    let cells: Vec<String> = {
        let doc = scraper::Html::parse_document(&list.body);
        let sel = scraper::Selector::parse(&format!("{} > td", row("imports"))).unwrap();
        doc.select(&sel)
            .map(|e| {
                e.text()
                    .collect::<String>()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    // Batch, created, total, pending, failed, dead, cancelled, done, state.
    assert_eq!(cells[2..7], ["4", "2", "1", "1", "0"], "{cells:?}");
    assert!(cells[7].starts_with("50% 2 of 4 done"), "{cells:?}");
    assert_eq!(cells[8], "running");
    assert!(
        text_of(&list.body, &format!("{} .workflow-mark", row("imports"))).is_none(),
        "no workflow marker on a plain batch"
    );
    assert!(
        text_of(
            &list.body,
            &format!("{} td:last-child", row("imports-child"))
        )
        .is_some_and(|s| s == "building"),
        "the child is still being filled"
    );
    // Newest first, paged.
    let api = json_of(&app, "/api/batches?per_page=1").await;
    assert_eq!(
        (api["total"].as_u64(), api["page"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(api["batches"].as_array().unwrap().len(), 1);
    assert_eq!(api["batches"][0]["bid"], "imports-child", "{api}");
    let api = json_of(&app, "/api/batches?per_page=1&page=2").await;
    let imports = &api["batches"][0];
    assert_eq!(imports["bid"], "imports");
    assert_eq!(
        (
            imports["total"].as_u64(),
            imports["pending"].as_u64(),
            imports["failed"].as_u64(),
            imports["dead"].as_u64()
        ),
        (Some(4), Some(2), Some(1), Some(1)),
        "{imports}"
    );
    assert_eq!(imports["state"], "running");
    assert_eq!(imports["percent"], 50);
    assert_eq!(imports["description"], XSS[0]);
    assert!(imports["death_at"].as_f64().is_some());
    let paged = get(&app, "/batches?per_page=1").await;
    assert!(
        paged
            .body
            .contains("href=\"/batches?page=2&amp;per_page=1\""),
        "{}",
        paged.body
    );

    // The batch's page.
    let page = get(&app, "/batches/imports").await;
    assert_inert("/batches/imports", &page);
    let kv = |label: &str| {
        let doc = scraper::Html::parse_document(&page.body);
        let dt = scraper::Selector::parse("dl.kv > dt").unwrap();
        doc.select(&dt)
            .find(|e| e.text().collect::<String>() == label)
            .and_then(|e| e.next_siblings().find_map(scraper::ElementRef::wrap))
            .map(|e| e.text().collect::<String>().trim().to_string())
            .unwrap_or_else(|| panic!("{label} missing"))
    };
    for (label, want) in [
        ("Total", "4"),
        ("Pending", "2"),
        ("Failed", "1"),
        ("Waiting", "0"),
        ("Dead", "1"),
        ("Cancelled", "0"),
        ("Callbacks", "complete"),
        ("Completed", "—"),
        ("Parent batch", "—"),
    ] {
        assert_eq!(kv(label), want, "{label}");
    }
    assert!(kv("State").starts_with("running"));
    assert!(kv("Done").starts_with("50%"));
    assert!(kv("First death").contains("just now"));
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let dead_link = format!("a[href=\"/dead?q={}\"]", jids[2]);
    assert_eq!(
        text_of(&page.body, &format!("#members-dead {dead_link}")).as_deref(),
        Some(jids[2].as_str()),
        "a dead member links to the Dead set, filtered by its jid"
    );
    let failed_link = format!("#members-failed a[href=\"/retries?q={}\"]", jids[1]);
    assert!(text_of(&page.body, &failed_link).is_some(), "{}", page.body);
    assert!(
        text_of(
            &page.body,
            "#members-pending a[href=\"/batches/imports-child\"]"
        )
        .is_some(),
        "the child batch links to its page"
    );
    assert!(
        text_of(&page.body, "#members-waiting").is_none(),
        "empty states are left out"
    );
    // Each member list pages on its own.
    let mut pending = vec!["child:imports-child".to_string(), jids[1].clone()];
    pending.sort();
    let second = get(&app, "/batches/imports?state=pending&page=2&per_page=1").await;
    assert_inert("/batches/imports?state=pending&page=2", &second);
    let shown = text_of(&second.body, "#members-pending tbody td:nth-child(2)").unwrap();
    assert!(
        shown.ends_with(pending[1].trim_start_matches("child:")),
        "{shown}"
    );
    assert!(
        second
            .body
            .contains("href=\"/batches/imports?page=1&amp;per_page=1&amp;state=pending\""),
        "{}",
        second.body
    );
    // The child's page links to its parent.
    let child = get(&app, "/batches/imports-child").await;
    assert_inert("/batches/imports-child", &child);
    assert!(
        text_of(&child.body, "dl.kv a[href=\"/batches/imports\"]").as_deref() == Some("imports")
    );

    let api = json_of(&app, "/api/batches/imports").await;
    assert_eq!(api["batch"]["bid"], "imports");
    assert_eq!(api["batch"]["parent"], Value::Null);
    assert_eq!(api["batch"]["callbacks"], json!(["complete"]));
    assert_eq!(api["members"]["pending"], json!(pending));
    assert_eq!(api["members"]["failed"], json!([jids[1]]));
    assert_eq!(api["members"]["dead"], json!([jids[2]]));
    assert_eq!(api["members"]["waiting"], json!([]));
    assert_eq!(api["members"]["cancelled"], json!([]));
    assert_eq!(api["steps"], Value::Null, "not a workflow");
    let api = json_of(&app, "/api/batches/imports?per_page=1&page=2").await;
    assert_eq!(api["members"]["pending"], json!([pending[1]]));
    assert_eq!(api["members"]["dead"], json!([]));

    // Not there: a 404 page and a 404 answer.
    let missing = get(&app, &format!("/batches/{}", enc(XSS[0]))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("Batch not found"));
    let r = send(
        &app,
        Request::get("/api/batches/nope")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "not_found");

    // Under a mount point, the links follow it.
    let nested = Router::new().nest(
        "/errand",
        errand_web::router(
            Arc::new(b.clone()),
            WebConfig::default().base_path("/errand"),
        ),
    );
    let r = get(&nested, "/errand/batches").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("href=\"/errand/batches/imports\""));
    let r = get(&nested, "/errand/batches/imports").await;
    assert!(
        r.body
            .contains(&format!("href=\"/errand/dead?q={}\"", jids[2]))
    );
}

/// A workflow's page shows each step with the state its members' lists give it (succeeded,
/// retrying, dead, cancelled, waiting, enqueued) and what it waits for; the list marks
/// it as a workflow; the API gives the steps too.
#[tokio::test]
async fn a_workflow_page_shows_each_steps_state() {
    let f = fixture().await;
    let b = &f.broker;
    let app = app(&f, WebConfig::default());
    let step = |name: &str, after: &[&str]| WaitingStep {
        jid: format!("jid-{name}"),
        job: JobHead::new(
            "wf",
            &format!(r#"{{"class":"Step","args":["{name}"],"jid":"jid-{name}","queue":"wf"}}"#),
        )
        .unwrap(),
        after: after.iter().map(|a| format!("jid-{a}")).collect(),
    };
    // fetch → (parse, notify); parse → store; (store, notify) → report; audit on its own.
    let waiting = [
        step("parse", &["fetch"]),
        step("notify", &["fetch"]),
        step("store", &["parse"]),
        step("report", &["store", "notify"]),
    ];
    let steps = [
        ("fetch", vec![]),
        ("parse", vec!["fetch"]),
        ("notify", vec!["fetch"]),
        ("store", vec!["parse"]),
        ("report", vec!["store", "notify"]),
        ("audit", vec![]),
    ];
    let definition = json!({
        "policy": "cancel_dependents",
        "steps": steps
            .iter()
            .map(|(name, after)| {
                // As errand's Workflow writes it: the class and queue of each step's job.
                let class = if *name == "report" { XSS[0] } else { "Step" };
                json!({"name": name, "jid": format!("jid-{name}"), "class": class, "queue": "wf", "after": after})
            })
            .collect::<Vec<_>>(),
    })
    .to_string();
    b.batch_create(&NewBatch {
        policy: FailurePolicy::CancelDependents,
        workflow: Some(&definition),
        ..new_batch("wf1", XSS[1], &waiting)
    })
    .await
    .unwrap();
    for root in ["fetch", "audit"] {
        let jid = format!("jid-{root}");
        let job = json!({"class": "Step", "args": [root], "jid": jid, "queue": "wf"}).to_string();
        b.batch_add(
            "wf1",
            &[&jid],
            &[Enqueue {
                queue: "wf".into(),
                payload: job,
            }],
            &[],
        )
        .await
        .unwrap();
    }
    record(b, "wf1", BUILDING, BatchOutcome::Succeeded).await;
    record(b, "wf1", "jid-fetch", BatchOutcome::Succeeded).await; // pushes parse and notify
    record(b, "wf1", "jid-parse", BatchOutcome::Failed).await;
    record(b, "wf1", "jid-notify", BatchOutcome::Died).await; // cancels report
    let want = [
        ("fetch", "succeeded", "—"),
        ("parse", "retrying", "fetch"),
        ("notify", "dead", "fetch"),
        ("store", "waiting", "parse"),
        ("report", "cancelled", "store, notify"),
        ("audit", "enqueued", "—"),
    ];

    let list = get(&app, "/batches").await;
    assert_inert("/batches", &list);
    assert_eq!(
        text_of(
            &list.body,
            "tr:has(> td > a[href=\"/batches/wf1\"]) .workflow-mark"
        )
        .as_deref(),
        Some("workflow")
    );
    let page = get(&app, "/batches/wf1").await;
    assert_inert("/batches/wf1", &page);
    for (name, state, after) in want {
        let row = format!("table.steps tr[data-step=\"{name}\"]");
        assert_eq!(
            text_of(&page.body, &format!("{row} td.step-state")).as_deref(),
            Some(state),
            "{name}"
        );
        assert_eq!(
            text_of(&page.body, &format!("{row} td:last-child")).as_deref(),
            Some(after),
            "{name}"
        );
    }
    assert!(
        text_of(
            &page.body,
            "table.steps tr[data-step=\"notify\"] a[href=\"/dead?q=jid-notify\"]"
        )
        .is_some()
    );
    assert_eq!(
        text_of(
            &page.body,
            "table.steps tr[data-step=\"report\"] td:nth-child(2) div"
        )
        .as_deref(),
        Some("<script>alert(1)</script> on wf"),
        "the step's class and queue, as text"
    );
    assert!(page.body.contains("cancel_dependents"));
    assert!(text_of(&page.body, "#members-cancelled").is_some_and(|t| t.contains("jid-report")));
    assert!(text_of(&page.body, "#members-waiting").is_some_and(|t| t.contains("store")));

    let api = json_of(&app, "/api/batches/wf1").await;
    let got: Vec<(String, String)> = api["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = want
        .iter()
        .map(|(n, s, _)| (n.to_string(), s.to_string()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(api["steps"][4]["after"], json!(["store", "notify"]));
    assert_eq!(api["steps"][4]["jid"], "jid-report");
    assert_eq!(api["steps"][4]["class"], XSS[0]);
    assert_eq!(api["steps"][4]["queue"], "wf");
    assert_eq!(
        (
            api["batch"]["waiting"].as_u64(),
            api["batch"]["cancelled"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(api["batch"]["policy"], "cancel_dependents");
    assert_eq!(api["members"]["cancelled"], json!(["jid-report"]));
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

/// Puts a failed `class` job whose payload carries `traceparent` (and a `tracestate`) into
/// `set` (`dead` or `retries`); returns its key.
async fn traced(f: &Fixture, app: &Router, set: &str, class: &str, traceparent: Value) -> String {
    let mut p = payload(class, "default", json!([1]));
    p.set("traceparent", traceparent);
    p.set("tracestate", "rojo=00f067aa0ba902b7");
    let raw = failed(p, "RuntimeError", "boom");
    let to = match set {
        "dead" => Settle::Dead {
            payload: raw,
            now: errand_core::now(),
            limits: DeadLimits::default(),
        },
        _ => Settle::Retry {
            payload: raw,
            at: errand_core::now() + 600.0,
        },
    };
    put(&f.broker, to).await;
    let list = json_of(app, &format!("/api/{set}?class={}", enc(class))).await;
    let entries = list["page"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    entries[0]["key"].as_str().unwrap().to_string()
}

/// A link's `href` and `rel`.
type Link = (String, Option<String>);

/// The page's "Trace" row (`dd.trace`): its text and its links.
fn trace_cell(body: &str) -> Option<(String, Vec<Link>)> {
    let doc = scraper::Html::parse_document(body);
    let dd = scraper::Selector::parse("dd.trace").unwrap();
    let a = scraper::Selector::parse("a").unwrap();
    let cell = doc.select(&dd).next()?;
    let links = cell
        .select(&a)
        .map(|l| {
            (
                l.value().attr("href").unwrap_or_default().to_string(),
                l.value().attr("rel").map(str::to_string),
            )
        })
        .collect();
    Some((cell.text().collect(), links))
}

/// A dead or retrying job whose payload carries a valid W3C `traceparent` shows its trace id
/// and parent span id on its page, linked to the trace viewer when `trace_url` is set; the
/// job's API has the `trace` object with the filled-in link, or `url: null` without a
/// template (issue 18).
#[tokio::test]
async fn a_jobs_trace_is_shown_and_linked_to_the_trace_viewer() {
    let f = fixture().await;
    let traceparent = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    let linked = app(
        &f,
        WebConfig::default()
            .trace_url("https://jaeger.example/trace/{trace_id}?uiFind={span_id}&x=1")
            .unwrap(),
    );
    let plain = app(&f, WebConfig::default());
    let dead = traced(&f, &plain, "dead", "Traced", json!(traceparent)).await;
    let retry = traced(&f, &plain, "retries", "TracedRetry", json!(traceparent)).await;
    let want_url = format!("https://jaeger.example/trace/{TRACE_ID}?uiFind={SPAN_ID}&x=1");

    for (slug, key) in [("dead", &dead), ("retries", &retry)] {
        let uri = format!("/{slug}/job?key={}", enc(key));
        let r = get(&linked, &uri).await;
        assert_inert(&uri, &r);
        let (text, links) = trace_cell(&r.body).expect("a Trace row");
        assert!(text.contains(TRACE_ID) && text.contains(SPAN_ID), "{text}");
        assert_eq!(
            links,
            vec![(want_url.clone(), Some("noopener noreferrer".to_string()))],
            "{uri}"
        );
        // The href is escaped in the HTML (`&` as `&amp;`).
        assert!(
            r.body.contains(&want_url.replace('&', "&amp;")),
            "{}",
            r.body
        );

        let api = json_of(&linked, &format!("/api/{slug}/job?key={}", enc(key))).await;
        assert_eq!(
            api["trace"],
            json!({"trace_id": TRACE_ID, "span_id": SPAN_ID, "sampled": true, "url": want_url}),
            "{api}"
        );

        // Without a template: the ids, no link; `url` is null.
        let r = get(&plain, &uri).await;
        assert_inert(&uri, &r);
        let (text, links) = trace_cell(&r.body).expect("a Trace row");
        assert!(text.contains(TRACE_ID), "{text}");
        assert!(links.is_empty(), "{links:?}");
        let api = json_of(&plain, &format!("/api/{slug}/job?key={}", enc(key))).await;
        assert_eq!(api["trace"]["trace_id"], TRACE_ID, "{api}");
        assert_eq!(api["trace"]["url"], Value::Null, "{api}");
    }

    // A job without a trace context has no Trace row, and `trace: null`.
    let plain_key = keys(&plain, "scheduled").await[0].clone();
    let r = get(&plain, &format!("/scheduled/job?key={}", enc(&plain_key))).await;
    assert!(trace_cell(&r.body).is_none());
    let api = json_of(
        &linked,
        &format!("/api/scheduled/job?key={}", enc(&plain_key)),
    )
    .await;
    assert_eq!(api["trace"], Value::Null, "{api}");
}

/// A `traceparent` that is not valid per W3C (markup, all-zero ids, version `ff`, upper case,
/// not a string) is shown as inert text marked invalid, never linked, and is `trace: null` in
/// the API, even with a trace link template configured.
#[tokio::test]
async fn an_invalid_traceparent_is_shown_inert_and_never_linked() {
    let f = fixture().await;
    let app = app(
        &f,
        WebConfig::default()
            .trace_url("https://jaeger.example/trace/{trace_id}")
            .unwrap(),
    );
    let cases = [
        json!(XSS[0]),
        json!(format!(
            "00-{TRACE_ID}-{SPAN_ID}-01\"><script>alert(1)</script>"
        )),
        json!(format!("00-{}-{SPAN_ID}-01", "0".repeat(32))),
        json!(format!("00-{TRACE_ID}-{}-01", "0".repeat(16))),
        json!(format!("ff-{TRACE_ID}-{SPAN_ID}-01")),
        json!(format!("00-{}-{SPAN_ID}-01", TRACE_ID.to_uppercase())),
        json!({"evil": XSS[1]}),
    ];
    for (i, tp) in cases.iter().enumerate() {
        let class = format!("Bad{i}");
        let key = traced(&f, &app, "dead", &class, tp.clone()).await;
        let uri = format!("/dead/job?key={}", enc(&key));
        let r = get(&app, &uri).await;
        assert_inert(&uri, &r);
        let (text, links) = trace_cell(&r.body).unwrap_or_else(|| panic!("{tp}: a Trace row"));
        assert!(text.contains("invalid"), "{tp}: {text}");
        assert!(links.is_empty(), "{tp}: not linked: {links:?}");
        assert!(!r.body.contains("jaeger.example"), "{tp}: no link anywhere");
        assert!(!r.body.contains("<script>alert"), "{tp}: escaped");
        let api = json_of(&app, &format!("/api/dead/job?key={}", enc(&key))).await;
        assert_eq!(api["trace"], Value::Null, "{tp}: {api}");
    }
    let r = get(&app, "/dead?class=Bad0").await;
    assert_inert("/dead?class=Bad0", &r);
}

/// A trace link template that is not an http(s) URL with a host, or lacks `{trace_id}`, is
/// refused when configured, with a message saying why; one put into the field directly is not
/// used.
#[tokio::test]
async fn a_bad_trace_url_template_is_refused() {
    for (bad, says) in [
        ("javascript:alert('{trace_id}')", "http:// or https://"),
        ("data:text/html,{trace_id}", "http:// or https://"),
        ("//jaeger.example/trace/{trace_id}", "http:// or https://"),
        ("jaeger.example/trace/{trace_id}", "http:// or https://"),
        ("https://jaeger.example/trace/", "{trace_id}"),
        ("https://jaeger.example/trace/{traceid}", "{trace_id}"),
        ("https:///trace/{trace_id}", "host"),
        (
            "https://jaeger.example/trace/{trace_id}\" onclick=\"x",
            "spaces",
        ),
    ] {
        let e = WebConfig::default()
            .trace_url(bad)
            .expect_err(bad)
            .to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    let ok = WebConfig::default()
        .trace_url("http://localhost:16686/trace/{trace_id}")
        .unwrap();
    assert!(ok.validate().is_ok());

    let f = fixture().await;
    let config = WebConfig {
        trace_url: Some("javascript:alert('{trace_id}')".into()),
        ..WebConfig::default()
    };
    assert!(config.validate().is_err());
    let app = app(&f, config);
    let key = traced(
        &f,
        &app,
        "dead",
        "Traced",
        json!(format!("00-{TRACE_ID}-{SPAN_ID}-01")),
    )
    .await;
    let uri = format!("/dead/job?key={}", enc(&key));
    let r = get(&app, &uri).await;
    assert_inert(&uri, &r);
    let (text, links) = trace_cell(&r.body).expect("a Trace row");
    assert!(text.contains(TRACE_ID), "{text}");
    assert!(links.is_empty(), "{links:?}");
    let api = json_of(&app, &format!("/api/dead/job?key={}", enc(&key))).await;
    assert_eq!(api["trace"]["url"], Value::Null, "{api}");
}
