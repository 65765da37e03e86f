//! The backend conformance suites (the broker's and the admin side's) on Redis, twice: on one
//! `redis-server` (`single::`, or `REDIS_URL` when set), and in cluster mode on a three-master
//! Redis Cluster the test starts (`cluster::`, `RedisConfig::cluster`). Each is shared by the
//! cases running at a time, each case in its own key namespace.

use async_trait::async_trait;
use errand_backend_tests::{AdminBackend, AdminFactory, BackendFactory, Inspect, TestBackend};
use errand_core::admin::Admin;
use errand_core::broker::Broker;
use errand_redis::{RedisBroker, RedisConfig};
use errand_tests::{RedisCluster, RedisServer};
use redis::AsyncCommands;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The servers the running cases share. A `static` is never dropped, so a server kept there
/// would outlive the test binary; instead each case's factory holds an `Arc`, and the server
/// stops when the last case using it ends (a later case starts a new one).
static SERVER: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
static CLUSTER: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());

fn shared<T>(slot: &Mutex<Weak<T>>, start: impl FnOnce() -> T) -> Arc<T> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let s = Arc::new(start());
    *slot = Arc::downgrade(&s);
    s
}

fn unique_namespace() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "conformance-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Made once per case (the macro evaluates `Redis::single()` or `Redis::cluster()` per test),
/// so it keeps the shared server alive for exactly as long as the case runs.
struct Redis {
    name: &'static str,
    config: RedisConfig,
    _server: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Redis {
    fn single() -> Self {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Self {
                name: "redis",
                config: RedisConfig::new(url),
                _server: None,
            },
            _ => {
                let s = shared(&SERVER, RedisServer::start);
                Self {
                    name: "redis",
                    config: RedisConfig::new(s.url()),
                    _server: Some(s),
                }
            }
        }
    }

    fn cluster() -> Self {
        let s = shared(&CLUSTER, || RedisCluster::start(3));
        Self {
            name: "redis-cluster",
            config: RedisConfig::cluster(s.addrs()),
            _server: Some(s),
        }
    }
}

struct RedisInspect(RedisBroker);

#[async_trait]
impl Inspect for RedisInspect {
    fn admin(&self) -> &dyn Admin {
        &self.0
    }
    fn broker(&self) -> &dyn Broker {
        &self.0
    }
    async fn push_signal(&self, identity: &str, name: &str) -> bool {
        // Any name, as Sidekiq's Web UI (or anything else) could push it.
        let _: () = self
            .0
            .connection()
            .lpush(self.0.keys().signals(identity), name)
            .await
            .unwrap();
        true
    }
    async fn let_time_pass(&self, _by: Duration) {
        // Redis expires keys on its own clock; the case polls with a deadline.
    }
}

#[async_trait]
impl BackendFactory for Redis {
    fn name(&self) -> &str {
        self.name
    }
    async fn new_backend(&self) -> TestBackend {
        let (broker, inspect) = self.connect_new().await;
        TestBackend {
            inspect,
            broker: Arc::new(broker),
        }
    }
}

#[async_trait]
impl AdminFactory for Redis {
    async fn new_admin_backend(&self) -> AdminBackend {
        let (broker, inspect) = self.connect_new().await;
        AdminBackend::new(Arc::new(broker), inspect)
    }
}

impl Redis {
    /// A broker in a new namespace of its own, and the inspection view of that namespace.
    async fn connect_new(&self) -> (RedisBroker, Arc<dyn Inspect>) {
        let ns = unique_namespace();
        let broker = RedisBroker::connect_with(self.config.clone().namespace(ns.clone()))
            .await
            .expect("connect to the test redis");
        let inspect = Arc::new(RedisInspect(broker.clone()));
        (broker, inspect)
    }
}

mod single {
    use super::Redis;
    errand_backend_tests::conformance_tests!(Redis::single());
    errand_backend_tests::admin_conformance_tests!(Redis::single());
}

mod cluster {
    use super::Redis;
    errand_backend_tests::conformance_tests!(Redis::cluster());
    errand_backend_tests::admin_conformance_tests!(Redis::cluster());
}
