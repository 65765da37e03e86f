//! `errand web`: serves the dashboard on an SQLite file or a Redis server.

use crate::WebArgs;
use crate::backend::Backend;
use anyhow::{Context, bail};
use errand_web::{Auth, WebConfig};

/// The authentication the options ask for.
fn auth(args: &WebArgs) -> anyhow::Result<Auth> {
    if let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) {
        if token.len() < 16 {
            bail!("the access token must be at least 16 characters");
        }
        return Ok(Auth::Token(token.to_string()));
    }
    if let Some(basic) = args.basic.as_deref().filter(|b| !b.is_empty()) {
        let (user, password) = basic
            .split_once(':')
            .context("--basic takes user:password")?;
        if password.len() < 8 {
            bail!("the basic-auth password must be at least 8 characters");
        }
        return Ok(Auth::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    Ok(Auth::None)
}

/// The dashboard's settings from the options: authentication, mount path, the dead set's
/// limits for kills, and the host names it answers to.
fn config(args: &WebArgs, auth: Auth) -> anyhow::Result<WebConfig> {
    let mut config = WebConfig::default()
        .auth(auth)
        .base_path(&args.base_path)
        .dead_limits(errand::DeadLimits {
            max_jobs: args.dead_max_jobs,
            max_age: std::time::Duration::from_secs(args.dead_max_age_days * 86_400),
        });
    // The bound address is a name the dashboard answers to (a wildcard bind needs
    // --allow-host for the names it is reached by).
    let ip = args.bind.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        config = config.allow_host(match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        });
    }
    for host in &args.allow_hosts {
        config = config.allow_host(host);
    }
    if let Some(template) = &args.trace_url {
        config = config.trace_url(template)?;
    }
    Ok(config)
}

/// Serves until SIGINT/SIGTERM.
pub async fn run(args: WebArgs) -> anyhow::Result<()> {
    let auth = auth(&args)?;
    if !errand_web::is_loopback(&args.bind) && !auth.is_enabled() {
        if !args.insecure_no_auth {
            bail!(
                "refusing to serve {} without authentication: anyone who reaches it could delete \
                 jobs and stop processes. Set --token (or ERRAND_WEB_TOKEN) or --basic user:password, \
                 or bind 127.0.0.1; --insecure-no-auth overrides this",
                args.bind
            );
        }
        eprintln!();
        eprintln!(
            "  !!! WARNING: the Errand dashboard is serving {} WITHOUT AUTHENTICATION.",
            args.bind
        );
        eprintln!(
            "  !!! Anyone who can reach this address can retry, delete and kill jobs and stop processes."
        );
        eprintln!();
    }
    let backend = Backend::open(
        &args.sqlite,
        args.redis.as_deref(),
        args.postgres.as_deref(),
        args.namespace.as_deref(),
        false,
    )
    .await?;
    let config = config(&args, auth)?;
    let base = config.base_path.clone();
    let app = if base.is_empty() {
        errand_web::router(backend.store(), config)
    } else {
        axum::Router::new().nest(&base, errand_web::router(backend.store(), config))
    };
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let addr = listener.local_addr()?;
    let what = match (&args.redis, &args.postgres) {
        (Some(_), _) => "Redis".to_string(),
        (None, Some(_)) => "PostgreSQL".to_string(),
        (None, None) => args.sqlite.display().to_string(),
    };
    println!("Errand dashboard for {what} on http://{addr}{base}/");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn web_args(args: &[&str]) -> WebArgs {
        let mut all = vec!["errand", "web"];
        all.extend_from_slice(args);
        match crate::Cli::try_parse_from(all).unwrap().command {
            crate::Command::Web(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn kills_trim_to_the_dead_limits_given() {
        let c = config(
            &web_args(&["--dead-max-jobs", "500", "--dead-max-age-days", "7"]),
            Auth::None,
        )
        .unwrap();
        assert_eq!(c.dead_limits.max_jobs, 500);
        assert_eq!(c.dead_limits.max_age.as_secs(), 7 * 86_400);
        let d = config(&web_args(&[]), Auth::None).unwrap();
        assert_eq!(d.dead_limits, errand::DeadLimits::default());
    }

    #[test]
    fn the_bound_address_and_allowed_hosts_are_answered() {
        let c = config(
            &web_args(&["--bind", "10.1.2.3:7878", "--allow-host", "errand.internal"]),
            Auth::None,
        )
        .unwrap();
        assert_eq!(c.allowed_hosts, ["10.1.2.3", "errand.internal"]);
        let c = config(&web_args(&["--bind", "0.0.0.0:7878"]), Auth::None).unwrap();
        assert!(c.allowed_hosts.is_empty());
    }

    #[test]
    fn a_trace_url_template_is_checked_and_kept() {
        let c = config(
            &web_args(&["--trace-url", "https://jaeger.internal/trace/{trace_id}"]),
            Auth::None,
        )
        .unwrap();
        assert_eq!(
            c.trace_url.as_deref(),
            Some("https://jaeger.internal/trace/{trace_id}")
        );
        let bad = config(
            &web_args(&["--trace-url", "javascript:alert({trace_id})"]),
            Auth::None,
        );
        assert!(bad.is_err(), "a template that is not http(s) is refused");
        assert!(
            config(&web_args(&[]), Auth::None)
                .unwrap()
                .trace_url
                .is_none()
        );
    }
}
