//! Real Redis topologies on free loopback ports: standalone (plain, password, TLS), a
//! 3-master Redis Cluster and Sentinel; the `[cluster]` section that points a node at one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

/// A `redis-server` on a free loopback port, killed when dropped. Persistence is off.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Arguments beyond the defaults (`--requirepass ...`).
    extra: Vec<String>,
}

/// What every test `redis-server` runs with besides its port: loopback only, nothing on disk.
fn redis_args() -> Vec<String> {
    ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        .map(String::from)
        .to_vec()
}

/// A loopback port nothing listens on (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Redis {
    /// Starts a server and waits until it answers.
    pub async fn start() -> Redis {
        Redis::start_with(&[]).await
    }

    /// Starts a server with extra arguments; a `--requirepass` server still answers the
    /// readiness probe (with an auth error), which is all the probe needs.
    pub async fn start_with(extra: &[&str]) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        // A free port can be taken by another test's server between the probe and the bind:
        // then ours exits and the answer came from theirs. Try another port.
        for _ in 0..5 {
            if r.launch().await {
                return r;
            }
            r.port = free_port();
        }
        panic!("could not start a redis-server of our own on a free port");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): Redis going away.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP` freezes it: connections stay open and commands hang, a slow
    /// Redis at its worst; `CONT` thaws it).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        assert!(
            self.launch().await,
            "redis-server could not take port {} again: another process holds it",
            self.port
        );
    }

    /// Starts the server on `self.port` and waits until it answers; false when the answer
    /// came from another process on that port (ours could not bind it).
    async fn launch(&mut self) -> bool {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(redis_args())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"PING\r\n").await;
                let mut buf = [0u8; 7];
                // `+PONG`, or `-NOAUTH` from a server with a password: either way it answers.
                if s.read_exact(&mut buf).await.is_ok()
                    && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
                {
                    return self.answered_by_ours(&buf == b"+PONG\r\n").await;
                }
            }
            assert!(start.elapsed() < WAIT, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Redis {
    /// Whether the server answering on our port is our child: its `process_id` when it takes
    /// commands without a password, else that our child is still running a moment later (a
    /// server that failed to bind exits at once).
    async fn answered_by_ours(&mut self, open: bool) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return false;
        };
        if open {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let _ = s.write_all(b"INFO server\r\n").await;
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !String::from_utf8_lossy(&got).contains("process_id:")
                    || !got.ends_with(b"\r\n\r\n")
                {
                    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&got);
                if let Some(line) = text.lines().find_map(|l| l.strip_prefix("process_id:")) {
                    return line.trim() == pid.to_string();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `[cluster]` section for `url` under a fresh cluster name, with a quick heartbeat and,
/// for TLS, the CA to trust.
pub fn cluster_config(url: &str, ca: Option<&Path>) -> String {
    let mut c = format!(
        "[cluster]\nname = \"{}\"\nredis_url = \"{url}\"\nnode_heartbeat = \"200ms\"\n",
        cluster_name()
    );
    if let Some(ca) = ca {
        c.push_str(&format!("redis_ca_file = \"{}\"\n", ca.display()));
    }
    c
}

/// A cluster name no other test uses.
pub fn cluster_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` until it returns true, within [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 3-master Redis Cluster (`redis-server --cluster-enabled yes`, `redis-cli --cluster
/// create`), killed when dropped.
pub struct RedisCluster {
    children: Vec<Child>,
    /// Ports of the masters.
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
    _certs: Option<tempfile::TempDir>,
}

impl RedisCluster {
    /// Starts `n` masters and joins them into one cluster covering every slot.
    pub async fn start(n: usize) -> RedisCluster {
        Self::start_with(n, None).await
    }

    /// The same cluster speaking only TLS, clients and cluster bus alike; returns the CA file.
    pub async fn start_tls(n: usize) -> (RedisCluster, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = make_certs(dir.path());
        let ca = certs.ca.clone();
        let mut cluster = Self::start_with(n, Some(&certs)).await;
        cluster._certs = Some(dir);
        (cluster, ca)
    }

    async fn start_with(n: usize, tls: Option<&Certs>) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = Vec::new();
        while ports.len() < n {
            let p = free_port();
            // The cluster bus listens on port + 10000.
            if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                ports.push(p);
            }
        }
        let mut children = Vec::new();
        for p in &ports {
            let conf = dir.path().join(format!("nodes-{p}.conf"));
            let mut args = listen_args(*p, tls);
            if tls.is_some() {
                args.extend(["--tls-cluster".into(), "yes".into()]);
            }
            args.extend(redis_args());
            args.extend(["--cluster-enabled".into(), "yes".into()]);
            args.extend([
                "--cluster-config-file".into(),
                conf.to_str().unwrap().to_owned(),
            ]);
            children.push(spawn_redis(dir.path(), &args));
        }
        let cli_tls: Vec<String> = match tls {
            None => Vec::new(),
            Some(c) => vec![
                "--tls".into(),
                "--cacert".into(),
                c.ca.to_str().unwrap().to_owned(),
            ],
        };
        let cli = |p: u16, args: &[&str]| -> String {
            let out = Command::new("redis-cli")
                .args(&cli_tls)
                .args(["-p", &p.to_string()])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let cluster = RedisCluster {
            children,
            ports,
            _dir: dir,
            _certs: None,
        };
        for p in &cluster.ports {
            let start = Instant::now();
            while cli(*p, &["PING"]).trim() != "PONG" {
                assert!(start.elapsed() < WAIT, "redis-server {p} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(&cli_tls)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for p in &cluster.ports {
            let start = Instant::now();
            while !cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(start.elapsed() < WAIT * 2, "cluster never became ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// `redis-cluster://h:p,h:p,h:p`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `redis-cli -p PORT ARGS...` and returns its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis primary, one replica and one Sentinel watching them (`mymaster`), killed when
/// dropped. [`RedisSentinel::kill_primary`] makes the Sentinel fail over to the replica.
pub struct RedisSentinel {
    primary: Option<Child>,
    others: Vec<Child>,
    /// Primary, replica, sentinel ports.
    pub ports: (u16, u16, u16),
    tls_ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
    _certs: Option<tempfile::TempDir>,
}

fn spawn_redis(dir: &Path, args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server")
}

impl RedisSentinel {
    /// Starts the three processes and waits until the Sentinel knows the replica.
    pub async fn start() -> RedisSentinel {
        Self::start_with(None).await
    }

    /// Like [`RedisSentinel::start`], every process speaking only TLS (replication and the
    /// Sentinel's own links included) with certificates made for the test; the CA file is
    /// returned for the nodes to trust.
    pub async fn start_tls() -> (RedisSentinel, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = make_certs(dir.path());
        let ca = dir.path().join("ca-copy.pem");
        std::fs::copy(&certs.ca, &ca).unwrap();
        let mut this = Self::start_with(Some(&certs)).await;
        this._certs = Some(dir);
        (this, ca)
    }

    async fn start_with(tls: Option<&Certs>) -> RedisSentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let (p, r, s) = (free_port(), free_port(), free_port());
        let base = |port: u16| {
            let mut args = listen_args(port, tls);
            if tls.is_some() {
                args.extend(["--tls-replication".into(), "yes".into()]);
            }
            args.extend(redis_args());
            args
        };
        let primary = spawn_redis(dir.path(), &base(p));
        let mut replica_args = base(r);
        replica_args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        let replica = spawn_redis(dir.path(), &replica_args);
        let conf = dir.path().join("sentinel.conf");
        let listen = match tls {
            None => format!("port {s}\n"),
            Some(c) => format!(
                "port 0\ntls-port {s}\ntls-replication yes\ntls-auth-clients no\n\
                 tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
                c.cert.display(),
                c.key.display(),
                c.ca.display()
            ),
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {p} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n"
            ),
        )
        .unwrap();
        let sentinel = spawn_redis(
            dir.path(),
            &[conf.to_str().unwrap().to_owned(), "--sentinel".into()],
        );
        let this = RedisSentinel {
            primary: Some(primary),
            others: vec![replica, sentinel],
            ports: (p, r, s),
            tls_ca: tls.map(|c| c.ca.clone()),
            _dir: dir,
            _certs: None,
        };
        let start = Instant::now();
        while !this
            .cli(s, &["SENTINEL", "REPLICAS", "mymaster"])
            .contains(&r.to_string())
            || !this
                .cli(r, &["INFO", "replication"])
                .contains("master_link_status:up")
        {
            assert!(start.elapsed() < WAIT * 2, "sentinel never saw the replica");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        this
    }

    /// `redis-cli` against one of the processes, over TLS when they speak it.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &port.to_string()]);
        if let Some(ca) = &self.tls_ca {
            cmd.args(["--tls", "--cacert", ca.to_str().unwrap()]);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `redis-sentinel://127.0.0.1:SENTINEL/mymaster`.
    pub fn url(&self) -> String {
        format!("redis-sentinel://127.0.0.1:{}/mymaster", self.ports.2)
    }

    /// Kills the primary; the Sentinel promotes the replica.
    pub fn kill_primary(&mut self) {
        if let Some(mut c) = self.primary.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The primary's port as the Sentinel reports it now.
    pub fn current_primary(&self) -> Option<u16> {
        self.cli(
            self.ports.2,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
        )
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.kill_primary();
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `redis-server` arguments to listen on `port`: plain TCP, or with `tls` TLS only (the plain
/// port off) serving those certificates.
fn listen_args(port: u16, tls: Option<&Certs>) -> Vec<String> {
    match tls {
        None => vec!["--port".into(), port.to_string()],
        Some(c) => {
            let mut a = vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
            ];
            a.extend(c.server_args());
            a
        }
    }
}

/// A `redis-server` speaking only TLS, with a CA and a server certificate (for 127.0.0.1)
/// made for the test; killed when dropped.
pub struct RedisTls {
    child: Child,
    /// TLS port.
    pub port: u16,
    /// The CA's PEM file.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl RedisTls {
    /// Makes the certificates, starts the server, waits until it accepts TCP.
    pub async fn start() -> RedisTls {
        Self::start_named("localhost", Some("127.0.0.1".parse().unwrap())).await
    }

    /// Like [`RedisTls::start`], with a server certificate for `dns` (and `ip`) only.
    pub async fn start_named(dns: &str, ip: Option<std::net::IpAddr>) -> RedisTls {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = make_certs_named(dir.path(), dns, ip);
        let ca_file = certs.ca.clone();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(listen_args(port, Some(&certs)))
            .args(redis_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(start.elapsed() < WAIT, "TLS redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RedisTls {
            child,
            port,
            ca_file,
            _dir: dir,
        }
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
