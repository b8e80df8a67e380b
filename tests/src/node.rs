//! Real `gateway-node` processes: the binary under test, starting a node on ephemeral ports,
//! its logs, metrics, signals and exit; the CLI run to completion.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Request;

use crate::*;

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

    /// Its process id, for another program to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
