//! Black-box test harness: real `gateway-node` processes on ephemeral ports, real WebSocket
//! clients, real HTTP.
//!
//! The node binary is the one `cargo build -p gateway-node` produced (`scripts/test` builds it
//! first); a binary older than the sources is refused, so a stale build never passes for the
//! code under test. `GATEWAY_NODE_BIN` overrides the path.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one expected thing before failing.
pub const WAIT: Duration = Duration::from_secs(10);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for e in entries.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_source(&p)
        } else if p.extension().is_some_and(|x| x == "rs" || x == "toml") {
            e.metadata().and_then(|m| m.modified()).unwrap_or(newest)
        } else {
            continue;
        };
        newest = newest.max(t);
    }
    newest
}

/// The node binary to test.
pub fn node_binary() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_NODE_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target.join("debug").join("gateway-node");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build -p gateway-node` (scripts/test does)",
                bin.display()
            )
        });
    let sources = newest_source(&root.join("crates"));
    assert!(
        built >= sources,
        "{} is older than the sources: run `cargo build -p gateway-node` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A running node; killed when dropped.
pub struct Node {
    child: Child,
    /// Client listener.
    pub client: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Its node id.
    pub node_id: String,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// How to start a node.
#[derive(Default, Clone)]
pub struct NodeOptions {
    /// TOML config body.
    pub config: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
}

impl NodeOptions {
    /// A node with this config file.
    pub fn config(toml: &str) -> Self {
        NodeOptions {
            config: toml.to_owned(),
            ..Default::default()
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

impl Node {
    /// Starts a node with this config on ephemeral loopback ports.
    pub async fn start(config: &str) -> Node {
        Node::start_with(NodeOptions::config(config)).await
    }

    /// Starts a node; panics with its output if it does not become ready.
    pub async fn start_with(opts: NodeOptions) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, &opts.config).expect("write config");
        let mut cmd = Command::new(node_binary());
        cmd.arg("--config").arg(&path);
        // Free loopback ports, unless the test names its own.
        for flag in ["--listen", "--admin-listen"] {
            if !opts.args.iter().any(|a| a == flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        cmd.args(&opts.args)
            .env("WSGATE_TELEMETRY__LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gateway-node");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("gateway-node ready") {
                    let _ = ready_tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = tokio::task::spawn_blocking(move || ready_rx.recv_timeout(WAIT))
            .await
            .unwrap();
        let line = match line {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("node did not start:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        let v: Value = serde_json::from_str(&line).expect("json log line");
        let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
        Node {
            client: addr("client"),
            admin: addr("admin"),
            node_id: v["node"].as_str().unwrap().to_owned(),
            child,
            logs,
            _dir: dir,
        }
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.client)
    }

    /// An admin URL.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Connects a JSON client and reads its welcome.
    pub async fn connect(&self) -> Client {
        Client::connect(self.ws_url().into_client_request().unwrap())
            .await
            .expect("connect")
    }

    /// Connects with a customised request.
    pub async fn connect_req(
        &self,
        f: impl FnOnce(&mut Request<()>),
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut req = self.ws_url().into_client_request().unwrap();
        f(&mut req);
        Client::connect(req).await
    }

    /// GET on the admin listener: status and JSON body (Null when not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        http_json(reqwest::Client::new().get(self.admin_url(path))).await
    }

    /// The node's log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends a signal (`SIGTERM`, `SIGINT`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "node did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A metric's value from `/metrics` (the first sample whose name and labels start with
    /// `name`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| {
                l.starts_with(name) && l[name.len()..].starts_with([' ', '{'])
                    || l.starts_with(&format!("{name} "))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Waits until a metric reads `expected`, failing with the last value read after
    /// [`WAIT`]. Counters are bumped just after the effect a client sees (a frame is counted
    /// once the kernel took it), so a test that has just seen the effect may read the
    /// counter a moment early; an over-count still fails, as the value never settles.
    pub async fn metric_settles(&self, name: &str, expected: f64) {
        let start = Instant::now();
        loop {
            let v = self.metric(name).await;
            if v == expected {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "metric {name} is {v}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a request; status and JSON body (Null when the body is not JSON).
pub async fn http_json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("http request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The HTTP status and JSON body of a refused upgrade.
pub fn refusal(e: tokio_tungstenite::tungstenite::Error) -> (u16, Value, Option<String>) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body, retry)
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

/// What a client read.
#[derive(Debug)]
pub enum Event {
    /// A JSON text frame.
    Json(Value),
    /// A binary frame.
    Binary(Bytes),
    /// A server ping.
    Ping,
    /// A close frame with its code.
    Close(Option<u16>),
    /// The stream ended without a close frame.
    Ended,
}

/// A WebSocket client.
pub struct Client {
    /// The socket.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The welcome frame (JSON clients; MessagePack welcomes are decoded to JSON).
    pub welcome: Value,
    /// The negotiated subprotocol header, if the server sent one.
    pub protocol: Option<String>,
}

impl Client {
    /// Connects and reads the welcome.
    pub async fn connect(
        req: Request<()>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut c = Client {
            ws,
            welcome: Value::Null,
            protocol,
        };
        c.welcome = match c.next_event().await {
            Event::Json(v) => v,
            Event::Binary(b) => msgpack_to_json(&b),
            other => panic!("expected a welcome, got {other:?}"),
        };
        assert_eq!(c.welcome["type"], "welcome");
        Ok(c)
    }

    /// This connection's id.
    pub fn id(&self) -> String {
        self.welcome["connection_id"].as_str().unwrap().to_owned()
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.expect("send");
    }

    /// Sends raw binary.
    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::binary(b)).await.expect("send");
    }

    /// The next thing from the server (pings included), within [`WAIT`].
    pub async fn next_event(&mut self) -> Event {
        let next = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("timed out waiting for the server");
        match next {
            None | Some(Err(_)) => Event::Ended,
            Some(Ok(Message::Text(t))) => {
                Event::Json(serde_json::from_str(&t).expect("JSON frame"))
            }
            Some(Ok(Message::Binary(b))) => Event::Binary(b),
            Some(Ok(Message::Ping(_))) => Event::Ping,
            Some(Ok(Message::Close(f))) => Event::Close(f.map(|f: CloseFrame| u16::from(f.code))),
            Some(Ok(_)) => Event::Json(Value::Null),
        }
    }

    /// The next JSON frame, skipping pings; panics on anything else.
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_event().await {
                Event::Json(v) => return v,
                Event::Ping => continue,
                other => panic!("expected a JSON frame, got {other:?}"),
            }
        }
    }

    /// The next binary frame decoded from MessagePack to JSON, skipping pings.
    pub async fn recv_msgpack(&mut self) -> Value {
        loop {
            match self.next_event().await {
                Event::Binary(b) => return msgpack_to_json(&b),
                Event::Ping => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// Sends a frame and returns the answer carrying the same `id`.
    pub async fn request(&mut self, v: Value) -> Value {
        let id = v["id"].clone();
        assert!(!id.is_null(), "request needs an id");
        self.send(v).await;
        loop {
            let f = self.recv().await;
            if f["id"] == id {
                return f;
            }
        }
    }

    /// Reads until the close frame and returns its code (skipping frames and pings).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next_event().await {
                Event::Close(code) => return code,
                Event::Ended => return None,
                _ => continue,
            }
        }
    }

    /// Discards whatever arrives until `quiet` passes without a message.
    pub async fn drain(&mut self, quiet: Duration) {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(quiet, self.ws.next()).await {}
    }

    /// Asserts nothing arrives (pings aside) for `d`.
    pub async fn assert_silent(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// Decodes MessagePack into JSON (bin as base64), for assertions.
pub fn msgpack_to_json(b: &[u8]) -> Value {
    let v = rmpv::decode::read_value(&mut &b[..]).expect("msgpack frame");
    mp_json(v)
}

fn mp_json(v: rmpv::Value) -> Value {
    use rmpv::Value as V;
    match v {
        V::Nil => Value::Null,
        V::Boolean(b) => b.into(),
        V::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or(i.as_u64().map(Value::from))
            .unwrap(),
        V::F32(f) => (f as f64).into(),
        V::F64(f) => f.into(),
        V::String(s) => s.into_str().unwrap().into(),
        V::Binary(b) => Value::String(format!("<bin:{}>", b.len())),
        V::Array(a) => a.into_iter().map(mp_json).collect(),
        V::Map(m) => m
            .into_iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), mp_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        V::Ext(..) => Value::String("<ext>".into()),
    }
}

/// Encodes a JSON-like value as MessagePack (for msgpack clients).
pub fn msgpack(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

/// Connects with a subprotocol list.
pub async fn connect_protocols(
    node: &Node,
    protocols: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let p = protocols.to_owned();
    node.connect_req(move |r| {
        r.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(&p).unwrap());
    })
    .await
}

/// Connects with an `Authorization: Bearer` token.
pub async fn connect_bearer(
    node: &Node,
    token: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let t = format!("Bearer {token}");
    node.connect_req(move |r| {
        r.headers_mut()
            .insert("authorization", HeaderValue::from_str(&t).unwrap());
    })
    .await
}

/// Runs `gateway-node` with arguments to completion: exit status, stdout, stderr.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(node_binary());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run gateway-node");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a node on ephemeral loopback ports with `args` added, expects it to refuse to start,
/// and returns what it printed on stderr (the reason, which must name the key).
pub fn start_refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (status, _, err) = run_cli(&all, env);
    assert!(!status.success(), "the node started with {args:?}");
    err
}

/// Mints a token with the node's CLI for a config file body.
pub fn mint_token(
    config: &str,
    sub: &str,
    rooms: Option<&str>,
    ttl: &str,
) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config)?;
    let p = path.to_str().context("path")?;
    let mut args = vec!["token", "--config", p, "--sub", sub, "--ttl", ttl];
    if let Some(r) = rooms {
        args.extend(["--rooms", r]);
    }
    let (status, out, err) = run_cli(&args, &[]);
    if !status.success() {
        bail!("token failed: {err}");
    }
    let t = out.trim().to_owned();
    if t.split('.').count() != 3 {
        return Err(anyhow!("not a JWT: {t}"));
    }
    Ok(t)
}

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

fn free_port() -> u16 {
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
        r.restart().await;
        r
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
                    return;
                }
            }
            assert!(start.elapsed() < WAIT, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// A test CA and a server certificate for 127.0.0.1 / localhost, as PEM files.
pub struct Certs {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl Certs {
    /// `redis-server` arguments serving these (clients are not asked for certificates).
    pub fn server_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, path) in [
            ("--tls-cert-file", &self.cert),
            ("--tls-key-file", &self.key),
            ("--tls-ca-cert-file", &self.ca),
        ] {
            args.push(flag.to_owned());
            args.push(path.to_str().unwrap().to_owned());
        }
        args.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
        args
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

/// Makes a CA and a server certificate for localhost and 127.0.0.1 in `dir`.
pub fn make_certs(dir: &Path) -> Certs {
    make_certs_named(dir, "localhost", Some("127.0.0.1".parse().unwrap()))
}

/// Makes a CA and a server certificate for `dns` (and `ip`, when given) in `dir`.
pub fn make_certs_named(dir: &Path, dns: &str, ip: Option<std::net::IpAddr>) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (redis-cli) takes a leaf whose issuer equals its subject for a
    // self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, dns);
    if let Some(ip) = ip {
        params.subject_alt_names.push(SanType::IpAddress(ip));
    }
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, body: String| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    Certs {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
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

/// Publishes on `publisher` into `room` until `receiver` (a member, on another node) gets a
/// message: cross-node traffic flows. `what` names the phase in the failure message.
pub async fn until_delivered(
    publisher: &mut Client,
    receiver: &mut Client,
    room: &str,
    what: &str,
) {
    for i in 0.. {
        assert!(i < 200, "{what}: cross-node traffic never flowed");
        publisher
            .send(serde_json::json!({"action":"publish","room":room,"data":i,"exclude_self":true}))
            .await;
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(100), receiver.ws.next()).await
        {
            if m.to_text()
                .map(|t| t.contains("\"message\""))
                .unwrap_or(false)
            {
                return;
            }
        }
    }
}
