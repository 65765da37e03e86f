//! `errand web` as a person runs it: it serves the dashboard on loopback, and refuses a
//! non-loopback address without authentication unless told otherwise, loudly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn errand(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_errand"));
    c.args(args)
        .env_remove("REDIS_URL")
        .env_remove("ERRAND_WEB_TOKEN")
        .env_remove("ERRAND_WEB_BASIC");
    c
}

/// Starts `errand web` and returns it with the address it printed.
fn serve(args: &[&str]) -> (Killed, String) {
    let mut child = errand(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start errand web");
    let stdout = child.stdout.take().unwrap();
    let child = Killed(child);
    let mut lines = BufReader::new(stdout).lines();
    let line = lines
        .next()
        .expect("a line from errand web")
        .expect("readable output");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    (child, url)
}

/// One HTTP/1.1 GET over a plain socket; returns (status line, whole response).
fn http_get(url: &str, path: &str, extra: &str) -> (String, String) {
    let host = url.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(host) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot connect to {host}: {e}"),
        }
    };
    // `extra` may name a Host of its own.
    let default_host = if extra.starts_with("Host:") {
        String::new()
    } else {
        format!("Host: {host}\r\n")
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\n{default_host}Connection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    (out.lines().next().unwrap_or("").to_string(), out)
}

#[test]
fn serves_the_dashboard_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.sqlite");
    let (_web, url) = serve(&[
        "web",
        "--sqlite",
        file.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
    ]);
    let (status, body) = http_get(&url, "/api/stats", "");
    assert!(status.contains("200"), "{body}");
    assert!(body.contains("\"kind\":\"sqlite\""), "{body}");
    let (status, body) = http_get(&url, "/dead", "Accept: text/html\r\n");
    assert!(status.contains("200"), "{body}");
    assert!(
        body.to_lowercase()
            .contains("content-security-policy: default-src 'none'")
    );
}

#[test]
fn a_token_protects_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.sqlite");
    let token = "a-token-of-sixteen-or-more";
    let (_web, url) = serve(&[
        "web",
        "--sqlite",
        file.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "--token",
        token,
    ]);
    let (status, _) = http_get(&url, "/api/stats", "");
    assert!(status.contains("401"), "{status}");
    let (status, _) = http_get(
        &url,
        "/api/stats",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    assert!(status.contains("200"), "{status}");
}

#[test]
fn refuses_a_public_address_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.sqlite");
    let out = errand(&[
        "web",
        "--sqlite",
        file.to_str().unwrap(),
        "--bind",
        "0.0.0.0:0",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve 0.0.0.0:0 without authentication"),
        "{err}"
    );
    assert!(!file.exists(), "nothing was opened");

    // Overridden: it serves, with a loud warning on stderr.
    let mut child = errand(&[
        "web",
        "--sqlite",
        file.to_str().unwrap(),
        "--bind",
        "0.0.0.0:0",
        "--insecure-no-auth",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _child = Killed(child);
    let first = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        first.contains("WARNING") && first.contains("WITHOUT AUTHENTICATION"),
        "{first}"
    );
}

/// `--help` never prints what the environment holds: REDIS_URL carries a password, the web
/// token and basic credentials are secrets (issue 13, item 16).
#[test]
fn help_never_prints_environment_values() {
    let secrets = [
        ("REDIS_URL", "redis://ops:s3cret-redis@127.0.0.1:1/0"),
        ("ERRAND_WEB_TOKEN", "s3cret-token"),
        ("ERRAND_WEB_BASIC", "ops:s3cret-basic"),
        ("ERRAND_REDIS_NAMESPACE", "s3cret-ns"),
    ];
    for sub in [
        &["web"][..],
        &["ops"],
        &["ops", "stats"],
        &["demo"],
        &["bench"],
        &[],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = Command::new(env!("CARGO_BIN_EXE_errand"))
            .args(&args)
            .envs(secrets)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "errand {args:?}: {text}");
        assert!(
            !text.contains("s3cret"),
            "errand {args:?} printed a secret from the environment:\n{text}"
        );
    }
}

/// DNS rebinding: without authentication `errand web` answers loopback names only, and the
/// names given with `--allow-host` (issue 13, item 15).
#[test]
fn answers_only_allowed_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.sqlite");
    let (_web, url) = serve(&[
        "web",
        "--sqlite",
        file.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
    ]);
    let port = url.rsplit(':').next().unwrap().to_string();
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, body) = http_get(&url, "/api/stats", &format!("Host: {host}\r\n"));
        assert!(status.contains("200"), "{host}: {body}");
    }
    // A rebinding page's requests name the attacker's host.
    let (status, body) = http_get(&url, "/api/stats", "Host: evil.example\r\n");
    assert!(status.contains("403"), "{body}");
    assert!(body.contains("--allow-host"), "{body}");

    let (_web, url) = serve(&[
        "web",
        "--sqlite",
        file.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "--allow-host",
        "errand.internal",
    ]);
    let (status, body) = http_get(&url, "/api/stats", "Host: errand.internal:7878\r\n");
    assert!(status.contains("200"), "{body}");
    let (status, _) = http_get(&url, "/api/stats", "Host: evil.example\r\n");
    assert!(status.contains("403"));
}
