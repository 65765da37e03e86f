//! Support for Errand's integration tests: a private `redis-server` per test suite on a free
//! port, condition waits with deadlines (never sleep-and-hope), and Ruby Sidekiq as a real peer.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own, on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    persistence: &'static [&'static str],
    /// Further arguments (a replica's `--replicaof`).
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// No persistence: the default for tests that never restart Redis.
const EPHEMERAL: &[&str] = &["--save", "", "--appendonly", "no"];
/// Every write fsynced to the append-only file before Redis answers (RELIABILITY-PLAN R2).
const AOF_ALWAYS: &[&str] = &[
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
];

fn spawn_redis(port: u16, dir: &Path, persistence: &[&str], extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(persistence)
        .args(extra)
        // DEBUG SLEEP, for the stall tests (Redis 7 refuses it unless enabled).
        .args(["--enable-debug-command", "local"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}); install it with `apt-get install redis-server`"
            )
        })
}

impl RedisServer {
    /// Starts a server without persistence and waits until it answers PING.
    ///
    /// # Panics
    /// When `redis-server` is not installed (install it: `apt-get install redis-server`) or does
    /// not come up within 10 s.
    pub fn start() -> Self {
        Self::start_with(EPHEMERAL)
    }

    /// Starts a server that fsyncs every write to its append-only file, so it can be killed
    /// and restarted ([`RedisServer::kill9`], [`RedisServer::restart`]) without losing an
    /// acknowledged write.
    ///
    /// # Panics
    /// As for [`RedisServer::start`].
    pub fn start_durable() -> Self {
        Self::start_with(AOF_ALWAYS)
    }

    /// Starts a server without persistence that replicates `master` (`--replicaof`), and
    /// waits until it answers PING (not until it has synced).
    ///
    /// # Panics
    /// As for [`RedisServer::start`].
    pub fn start_replica_of(master: &RedisServer) -> Self {
        Self::start_args(
            EPHEMERAL,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        )
    }

    fn start_with(persistence: &'static [&'static str]) -> Self {
        Self::start_args(persistence, Vec::new())
    }

    fn start_args(persistence: &'static [&'static str], extra: Vec<String>) -> Self {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let mut server = RedisServer {
                child: spawn_redis(port, dir.path(), persistence, &extra),
                port,
                persistence,
                extra: extra.clone(),
                dir,
            };
            if server.wait_ready() {
                return server;
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        panic!("redis-server did not start");
    }

    /// Waits up to 10 s for PING; false when the process exited (port taken) or never answered.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILLs the server (no shutdown, no final save).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and data folder (after [`RedisServer::kill9`])
    /// and waits until it answers.
    ///
    /// # Panics
    /// When it does not come back within 10 s.
    pub fn restart(&mut self) {
        self.kill9();
        self.child = spawn_redis(self.port, self.dir.path(), self.persistence, &self.extra);
        assert!(self.wait_ready(), "redis-server did not come back");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A URL selecting database `db` on this server (one namespace per test).
    pub fn url_db(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of the test's own: `masters` `redis-server`s in cluster mode on free
/// loopback ports (each with its own cluster-bus port and folder), the 16384 slots split evenly
/// in order, no replicas; killed on drop.
pub struct RedisCluster {
    nodes: Vec<(Child, u16, u16)>,
    _dirs: Vec<tempfile::TempDir>,
}

impl RedisCluster {
    /// Starts the servers, assigns the slots (`CLUSTER ADDSLOTSRANGE`), joins them
    /// (`CLUSTER MEET`) and waits until every node reports `cluster_state:ok` with the same
    /// slot map.
    ///
    /// # Panics
    /// When `redis-server` is not installed or the cluster does not form within 30 s.
    pub fn start(masters: usize) -> Self {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..masters {
            let dir = tempfile::tempdir().expect("temp dir");
            let (port, bus) = (free_port(), free_port());
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                "--cluster-port",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([bus.to_string()])
            .collect();
            let child = spawn_redis(port, dir.path(), EPHEMERAL, &extra);
            nodes.push((child, port, bus));
            dirs.push(dir);
        }
        let cluster = Self { nodes, _dirs: dirs };
        for i in 0..masters {
            wait_until_sync("a cluster node to answer", Duration::from_secs(10), || {
                cluster.try_node(i).is_some()
            });
        }
        let per = 16384 / masters;
        for i in 0..masters {
            let last = if i + 1 == masters {
                16383
            } else {
                (i + 1) * per - 1
            };
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(i * per)
                .arg(last)
                .query(&mut cluster.node(i))
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        for i in 1..masters {
            let (_, port, bus) = cluster.nodes[i];
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(port)
                .arg(bus)
                .query(&mut cluster.node(0))
                .expect("CLUSTER MEET");
        }
        wait_until_sync("the cluster to form", Duration::from_secs(30), || {
            let mut maps = Vec::new();
            for i in 0..masters {
                let Some(mut c) = cluster.try_node(i) else {
                    return false;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let slots: redis::Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(&mut c)
                    .unwrap_or(redis::Value::Nil);
                maps.push(format!("{slots:?}"));
            }
            maps.windows(2).all(|w| w[0] == w[1])
        });
        cluster
    }

    fn try_node(&self, i: usize) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.nodes[i].1))
            .and_then(|c| c.get_connection())
            .ok()
    }

    /// A blocking connection to master `i` (its own commands only: no redirections followed).
    pub fn node(&self, i: usize) -> redis::Connection {
        self.try_node(i).expect("connect to a cluster node")
    }

    /// `host:port` of every master, for `RedisConfig::cluster`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(_, port, _)| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The index of the master serving `slot`, as master 0 sees it.
    pub fn owner_of(&self, slot: u16) -> usize {
        let id: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query::<String>(&mut self.node(0))
            .expect("CLUSTER NODES")
            .lines()
            .find(|l| {
                l.split(' ').skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => a <= slot && slot <= b,
                        _ => false,
                    }
                })
            })
            .and_then(|l| l.split(' ').next().map(str::to_string))
            .expect("a node serves the slot");
        (0..self.nodes.len())
            .find(|&i| self.node_id(i) == id)
            .expect("the owner is one of ours")
    }

    fn node_id(&self, i: usize) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.node(i))
            .expect("CLUSTER MYID")
    }

    /// Moves `slot` and its keys from master `from` to master `to`, live, as
    /// `redis-cli --cluster reshard` does: the target marked importing and the source
    /// migrating (clients are sent `ASK`/`TRYAGAIN` meanwhile), the keys moved with `MIGRATE` in
    /// batches, then every master told the new owner.
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize) {
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let to_port = self.nodes[to].1;
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .query(&mut self.node(to))
            .expect("SETSLOT IMPORTING");
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .query(&mut self.node(from))
            .expect("SETSLOT MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut self.node(from))
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to_port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut self.node(from))
                .expect("MIGRATE");
        }
        for i in 0..self.nodes.len() {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query(&mut self.node(i))
                .expect("SETSLOT NODE");
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Sentinel of the test's own (Debian's `redis-sentinel`), on a free loopback port,
/// with its config file in a temporary folder (a sentinel rewrites it), killed on drop.
pub struct SentinelServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelServer {
    /// Starts a sentinel that monitors `master` under the name `name`, with quorum `quorum`,
    /// calling the master down after `down_after_ms` without a reply, and waits until it
    /// answers PING.
    ///
    /// # Panics
    /// When `redis-sentinel` is not installed (`apt-get install redis-sentinel`) or does not
    /// come up within 10 s.
    pub fn start(master: &RedisServer, name: &str, quorum: u32, down_after_ms: u64) -> Self {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {name} 127.0.0.1 {} {quorum}\n\
                     sentinel down-after-milliseconds {name} {down_after_ms}\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir.path().display(),
                    master.port
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start redis-sentinel ({e}); install it with \
                         `apt-get install redis-sentinel`"
                    )
                });
            let mut sentinel = SentinelServer {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = sentinel.child.try_wait() {
                    break;
                }
                if let Ok(mut c) = sentinel.try_conn()
                    && redis::cmd("PING").query::<String>(&mut c).is_ok()
                {
                    return sentinel;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = sentinel.child.kill();
            let _ = sentinel.child.wait();
        }
        panic!("redis-sentinel did not start");
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?.get_connection()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A blocking connection, for `SENTINEL …` questions.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect to test sentinel")
    }

    /// The port of the master this sentinel names for `name` now.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query(&mut self.try_conn().ok()?)
            .ok()?;
        addr?.1.parse().ok()
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cond` holds, checking every 20 ms, and panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The blocking version of [`wait_until`], for conditions checked with a blocking connection.
pub fn wait_until_sync(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This crate's `ruby/` folder (the Ruby side of the interop tests).
pub fn ruby_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ruby")
}

/// Runs a Ruby snippet with Sidekiq's client configured for `redis_url` (`ruby/prelude.rb`
/// loaded first) and returns its standard output.
///
/// # Panics
/// When Ruby is missing (install `ruby-sidekiq`) or the script fails; the panic shows stderr.
pub fn ruby(redis_url: &str, script: &str) -> String {
    let out = Command::new("ruby")
        .arg("-r")
        .arg(ruby_dir().join("prelude.rb"))
        .arg("-e")
        .arg(script)
        .env("REDIS_URL", redis_url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ruby ({e}); install `ruby-sidekiq`"));
    assert!(
        out.status.success(),
        "ruby failed: {}\n--- script ---\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Ruby `sidekiq` server process running `ruby/app.rb`, killed on drop.
pub struct RubySidekiq {
    child: Child,
}

impl RubySidekiq {
    /// Starts `sidekiq -r ruby/app.rb -c 2` on `queues` against `redis_url`.
    ///
    /// # Panics
    /// When the `sidekiq` command is missing (install `ruby-sidekiq`).
    pub fn start(redis_url: &str, queues: &[&str]) -> Self {
        let mut cmd = Command::new("sidekiq");
        cmd.arg("-r")
            .arg(ruby_dir().join("app.rb"))
            .args(["-c", "2", "-t", "1"]);
        for q in queues {
            cmd.args(["-q", q]);
        }
        let child = cmd
            .env("REDIS_URL", redis_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sidekiq ({e}); install `ruby-sidekiq`"));
        Self { child }
    }
}

impl Drop for RubySidekiq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logs to stderr at `warn` (or `RUST_LOG`), once per test binary.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// What a [`FaultProxy`] does to the traffic passing through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    None,
    /// Hold each chunk this long before forwarding it.
    Latency(Duration),
    /// Forward nothing while set (bytes wait, as in a partition where TCP keeps retrying);
    /// connections stay open and traffic resumes when it is lifted.
    Blackhole,
}

/// A TCP proxy in front of a server (toxiproxy and netem are not available here): set a
/// [`Fault`] to add latency or partition the link, or [`FaultProxy::cut`] every connection.
/// Runs on threads; stops when dropped.
pub struct FaultProxy {
    port: u16,
    /// Where new connections go ([`FaultProxy::retarget`]).
    upstream: std::sync::Arc<std::sync::atomic::AtomicU16>,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
    /// Incremented to cut every connection open now.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:<upstream>`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub fn start(upstream: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking accept");
        let port = listener.local_addr().unwrap().port();
        let fault = std::sync::Arc::new(std::sync::Mutex::new(Fault::None));
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(upstream));
        let (f, g, st, to) = (
            fault.clone(),
            generation.clone(),
            stop.clone(),
            target.clone(),
        );
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let upstream = to.load(Ordering::SeqCst);
                        let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream))
                        else {
                            continue;
                        };
                        let born = g.load(Ordering::SeqCst);
                        for (from, to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            let (f, g, st) = (f.clone(), g.clone(), st.clone());
                            std::thread::spawn(move || pump(from, to, &f, &g, born, &st));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            port,
            upstream: target,
            fault,
            generation,
            stop,
        }
    }

    /// Sends new connections to `127.0.0.1:<upstream>` from now on; connections open now stay
    /// with the server they reached (as after a failover behind a proxy or a DNS name).
    pub fn retarget(&self, upstream: u16) {
        self.upstream
            .store(upstream, std::sync::atomic::Ordering::SeqCst);
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sets the fault for all traffic from now on.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// Closes every connection open now (new ones are accepted).
    pub fn cut(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
    }
}

/// Copies `from` to `to` under the current fault until either side closes, the connection is
/// cut (its generation passed) or the proxy stops.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    fault: &std::sync::Mutex<Fault>,
    generation: &std::sync::atomic::AtomicU64,
    born: u64,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
            break;
        }
        let now = *fault.lock().unwrap_or_else(|p| p.into_inner());
        if now == Fault::Blackhole {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Fault::Latency(d) = now {
                    std::thread::sleep(d);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl RedisServer {
    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://<user>:<password>@127.0.0.1:<port>` (both percent-encoded by the caller when
    /// they need it).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Runs `ACL SETUSER <user> <rules…>` as the default user.
    ///
    /// # Panics
    /// When Redis refuses a rule.
    pub fn acl_setuser(&self, user: &str, rules: &[&str]) {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(user).arg(rules);
        let _: () = cmd
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("ACL SETUSER {user} {rules:?}: {e}"));
    }

    /// The field `name` of `INFO <section>` (e.g. `stats`, `total_connections_received`).
    pub fn info_field(&self, section: &str, name: &str) -> Option<String> {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query(&mut self.conn())
            .ok()?;
        info.lines()
            .filter_map(|l| l.trim_end().split_once(':'))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// An `errand-test-worker` process, SIGKILLed if the test ends (or fails) while it runs.
pub struct Worker(pub Child);

impl Worker {
    /// Starts the worker binary `bin` (an integration test passes
    /// `env!("CARGO_BIN_EXE_errand-test-worker")`) on `backend` (a Redis URL or
    /// `sqlite:<path>`), with `concurrency`, a shutdown timeout, and optionally a separate Redis
    /// for its ledger.
    ///
    /// # Panics
    /// When the binary cannot be started.
    pub fn start(
        bin: &str,
        backend: &str,
        concurrency: usize,
        shutdown_ms: u64,
        ledger: Option<&str>,
    ) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args([backend, &concurrency.to_string(), &shutdown_ms.to_string()]);
        if let Some(ledger) = ledger {
            cmd.arg(ledger);
        }
        Worker(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start errand-test-worker"),
        )
    }

    /// As [`Worker::start`] (no separate ledger), with `env` set for the worker.
    ///
    /// # Panics
    /// When the binary cannot be started.
    pub fn start_env(
        bin: &str,
        backend: &str,
        concurrency: usize,
        shutdown_ms: u64,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args([backend, &concurrency.to_string(), &shutdown_ms.to_string()])
            .envs(env.iter().copied());
        Worker(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start errand-test-worker"),
        )
    }

    /// As [`Worker::start`] (no separate ledger), with the process's address space limited to
    /// `limit_bytes` (`prlimit --as`, from util-linux): an allocation past it fails and the
    /// process aborts, as one past a container's memory limit is OOM-killed.
    ///
    /// # Panics
    /// When `prlimit` or the binary cannot be started.
    pub fn start_limited(bin: &str, backend: &str, concurrency: usize, limit_bytes: u64) -> Self {
        // prlimit execs the worker in its own place: the child is the worker.
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--as={limit_bytes}"))
            .arg("--")
            .arg(bin)
            .args([backend, &concurrency.to_string(), "5000"]);
        Worker(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start errand-test-worker under prlimit"),
        )
    }

    /// As [`Worker::start`], but the process's wall clock is moved by `faketime`'s `offset`
    /// (`-1h`, `+365d`; Debian's `faketime` package), its monotonic clock left alone so its
    /// timers run normally: a worker whose clock is wrong.
    ///
    /// # Panics
    /// When `faketime` or the binary cannot be started.
    pub fn start_skewed(bin: &str, backend: &str, concurrency: usize, offset: &str) -> Self {
        // libfaketime preloaded into the worker itself (not the `faketime` wrapper, whose child
        // would outlive a kill of the wrapper).
        let mut cmd = Command::new(bin);
        cmd.args([backend, &concurrency.to_string(), "1000"])
            .env(
                "LD_PRELOAD",
                "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            )
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        Worker(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start errand-test-worker"),
        )
    }

    /// Panics with the exit status if the worker has already exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.0.try_wait().expect("wait on the worker") {
            panic!("worker {} exited early: {status}", self.0.id());
        }
    }

    /// The worker's identity once it has registered in Sidekiq's `processes` set on `conn`'s
    /// Redis (its pid is the identity's second part). Waits up to 20 s.
    ///
    /// # Panics
    /// When it exits or does not register in time.
    pub fn identity(&mut self, conn: &mut redis::Connection) -> String {
        let pid = self.0.id().to_string();
        let mut found = None;
        wait_until_sync("the worker to register", Duration::from_secs(20), || {
            self.assert_running();
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg("processes")
                .query(conn)
                .expect("read processes");
            found = members
                .into_iter()
                .find(|m| m.split(':').nth(1) == Some(pid.as_str()));
            found.is_some()
        });
        found.expect("found above")
    }
}

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The worker binary's `Ledger(n)` job as a client sees it, for pushing typed jobs (with
/// `push_bulk`) that only worker processes run.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Ledger(pub u64);

impl errand::Job for Ledger {
    const NAME: &'static str = "Ledger";
    async fn perform(self, _cx: &errand::JobContext) -> errand::JobResult {
        unreachable!("run by errand-test-worker processes, not by the test")
    }
}

/// Every write appended to the append-only file, fsynced once a second (RELIABILITY-PLAN R1,
/// R3): a SIGKILL may lose about the last second of acknowledged writes, `SHUTDOWN` none.
const AOF_EVERYSEC: &[&str] = &[
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
];

impl RedisServer {
    /// Starts a server with `appendonly yes` and `appendfsync everysec`.
    ///
    /// # Panics
    /// As for [`RedisServer::start`].
    pub fn start_everysec() -> Self {
        Self::start_with(AOF_EVERYSEC)
    }

    /// Stops the server gracefully (`SHUTDOWN`: clients disconnected, the append-only file
    /// flushed and fsynced), waits for it to exit, keeps it down for `down`, then starts it
    /// again on the same port and data folder and waits until it answers (after loading its
    /// data).
    ///
    /// # Panics
    /// When it does not exit within 30 s or does not come back within 10 s.
    pub fn shutdown_and_restart(&mut self, down: Duration) {
        // The server closes the connection instead of replying.
        let _ = redis::cmd("SHUTDOWN").query::<redis::Value>(&mut self.conn());
        wait_until_sync("redis-server to shut down", Duration::from_secs(30), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        std::thread::sleep(down);
        self.child = spawn_redis(self.port, self.dir.path(), self.persistence, &self.extra);
        assert!(self.wait_ready(), "redis-server did not come back");
    }
}

// ---------------------------------------------------------------------------------------------
// TLS (RELIABILITY-PLAN S2): a test CA and a TLS-only server, made with the `openssl` command.

/// Whether the `openssl` command runs (TLS tests skip, saying so, when it does not).
pub fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `openssl args…` in `dir`, panicking with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it: `apt-get install openssl`")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a self-signed test CA in `dir`: `<name>.crt` (PEM) and `<name>.key`, valid two days,
/// with subject `CN=<name>`. Returns the certificate's path.
///
/// # Panics
/// When `openssl` is missing or fails.
pub fn make_test_ca(dir: &Path, name: &str) -> PathBuf {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &crt,
        ],
    );
    dir.join(crt)
}

/// Makes, in `dir`, a server key `server.key` and certificate `server.crt` signed by the CA
/// `<ca>.crt`/`<ca>.key` (from [`make_test_ca`]), naming only `san` (an OpenSSL
/// `subjectAltName` value such as `IP:127.0.0.1` or `DNS:redis.test`).
///
/// # Panics
/// When `openssl` is missing or fails.
pub fn make_server_cert(dir: &Path, ca: &str, san: &str) {
    std::fs::write(dir.join("server.ext"), format!("subjectAltName={san}\n")).expect("write ext");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=errand-test-server",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
}

impl RedisServer {
    /// Starts a TLS-only server (no plaintext port; clients need no certificate) on a free
    /// port, with a fresh CA `dir/ca.crt` (`CN=errand-test-ca`) and a server certificate
    /// `dir/server.crt` it signed, naming only `IP:127.0.0.1`; waits until it answers PING over
    /// TLS. Connect with [`RedisServer::tls_url`] and `ca.crt` as the trusted CA;
    /// [`RedisServer::url`] is the same port without TLS. The plaintext helpers
    /// ([`RedisServer::conn`], [`RedisServer::restart`], …) do not work on it.
    ///
    /// # Panics
    /// When `openssl` or `redis-server` is missing, or the server does not come up within 10 s.
    pub fn start_tls(dir: &Path) -> Self {
        make_test_ca(dir, "errand-test-ca");
        std::fs::rename(dir.join("errand-test-ca.crt"), dir.join("ca.crt")).expect("ca.crt");
        std::fs::rename(dir.join("errand-test-ca.key"), dir.join("ca.key")).expect("ca.key");
        make_server_cert(dir, "ca", "IP:127.0.0.1");
        let ca_pem = std::fs::read(dir.join("ca.crt")).expect("read ca.crt");
        for _ in 0..5 {
            let data = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", "0", "--bind", "127.0.0.1"])
                .args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(dir.join("server.crt"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.crt"))
                .args(["--tls-auth-clients", "no"])
                .args(EPHEMERAL)
                .arg("--dir")
                .arg(data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start redis-server ({e}); install it: `apt-get install redis-server`")
                });
            let mut server = RedisServer {
                child,
                port,
                persistence: EPHEMERAL,
                extra: Vec::new(),
                dir: data,
            };
            if server.wait_ready_tls(&ca_pem) {
                return server;
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        panic!("TLS redis-server did not start");
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// [`RedisServer::wait_ready`] over TLS, trusting `ca_pem`.
    fn wait_ready_tls(&mut self, ca_pem: &[u8]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca_pem.to_vec()),
            };
            if let Ok(client) = redis::Client::build_with_tls(self.tls_url(), certs)
                && let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// A PostgreSQL server of the test's own: a fresh cluster (`initdb`) in a temporary folder,
/// started with `pg_ctl` on a free loopback port (its socket in the same folder), stopped
/// (`immediate`) and deleted on drop. Never the machine's shared instance. Run as root, the
/// server runs as the `postgres` user (PostgreSQL refuses root).
pub struct PostgresServer {
    dir: tempfile::TempDir,
    port: u16,
}

/// Where Debian's PostgreSQL keeps `initdb` and `pg_ctl` (the newest installed version).
fn pg_bin(tool: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map(|v| v.join("bin").join(tool))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL's {tool} is missing: install Debian's `postgresql` package \
                 (scripts/test does)"
            )
        })
}

/// `cmd`, run as the `postgres` user when this process is root.
fn as_postgres(tool: &str) -> Command {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(tool));
        c
    } else {
        Command::new(pg_bin(tool))
    }
}

impl PostgresServer {
    /// Makes a cluster and starts it; waits until it accepts connections.
    ///
    /// # Panics
    /// When PostgreSQL is not installed or does not start (its log is shown).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let _ = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let out = as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-N", "-E", "UTF8"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..5 {
            let port = free_port();
            let status = as_postgres("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                    dir.path().display()
                ))
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "-t", "30", "start"])
                .stdout(Stdio::null())
                .status()
                .expect("run pg_ctl");
            if status.success() {
                return Self { dir, port };
            }
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A URL for database `db` (made with [`PostgresServer::create_db`]).
    pub fn url_db(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db` (one per test case, so cases do not share tables).
    pub fn create_db(&self, db: &str) {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("CREATE DATABASE \"{db}\""),
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
