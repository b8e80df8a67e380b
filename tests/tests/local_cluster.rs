//! `deploy/local-cluster.sh`: the compose topology from the built binary, Debian's
//! redis-server and nginx on loopback. Clients connect through the load balancer and land on
//! every node; one node is drained mid-traffic, as a KEDA scale-down would, and its clients
//! reconnect through the balancer to the others and resume a retained room with nothing lost.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use wsgate_tests::*;

/// The script with its ports, directory and binary; stops the cluster when dropped.
struct LocalCluster {
    env: Vec<(String, String)>,
    lb: u16,
    _dir: tempfile::TempDir,
}

impl LocalCluster {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new(root.join("deploy/local-cluster.sh"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("running deploy/local-cluster.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn start() -> LocalCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
        let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
        let env = vec![
            ("NODE_BIN".into(), node_binary().display().to_string()),
            ("CLUSTER_DIR".into(), dir.path().display().to_string()),
            ("LB_PORT".into(), ports[0].to_string()),
            ("NODE_PORTS".into(), list(&ports[1..4])),
            ("ADMIN_PORTS".into(), list(&ports[4..7])),
            ("REDIS_PORT".into(), ports[7].to_string()),
        ];
        let cluster = LocalCluster {
            env,
            lb: ports[0],
            _dir: dir,
        };
        let (ok, out) = cluster.run(&["start"]);
        assert!(ok, "local-cluster.sh start failed:\n{out}");
        cluster
    }

    async fn connect(&self) -> Client {
        let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            format!("ws://127.0.0.1:{}/ws", self.lb),
        )
        .unwrap();
        Client::connect(req)
            .await
            .expect("a connection through the balancer")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
    }
}

/// A member that resumes through the balancer whenever its node closes it.
struct Member {
    c: Client,
    node: String,
    last: u64,
    epoch: String,
    seen: Vec<u64>,
    reconnects: usize,
}

impl Member {
    async fn join(cluster: &LocalCluster, since: Option<(u64, &str)>) -> (Client, Value, Vec<u64>) {
        let mut c = cluster.connect().await;
        let mut frame = json!({"action":"join","room":"chat:lb","id":"j"});
        if let Some((s, e)) = since {
            frame["since"] = s.into();
            frame["epoch"] = e.into();
        }
        c.send(frame).await;
        let mut replayed = Vec::new();
        loop {
            let f = tokio::time::timeout(Duration::from_secs(5), c.recv())
                .await
                .expect("a join ack");
            match f["type"].as_str() {
                Some("message") => replayed.push(f["offset"].as_u64().unwrap()),
                Some("ack") if f["id"] == "j" => return (c, f, replayed),
                Some("error") => panic!("join refused: {f}"),
                _ => {}
            }
        }
    }

    async fn new(cluster: &LocalCluster) -> Member {
        let (c, ack, _) = Member::join(cluster, None).await;
        Member {
            node: c.welcome["node"].as_str().unwrap().to_owned(),
            c,
            last: ack["offset"].as_u64().unwrap(),
            epoch: ack["epoch"].as_str().unwrap().to_owned(),
            seen: Vec::new(),
            reconnects: 0,
        }
    }

    /// Reads until `target` arrives, resuming through the balancer when closed.
    async fn read_until(&mut self, cluster: &LocalCluster, target: u64) {
        while self.last < target {
            match tokio::time::timeout(Duration::from_secs(10), self.c.next_event())
                .await
                .expect("traffic within 10 s")
            {
                Event::Json(f) if f["type"] == "message" => {
                    let o = f["offset"].as_u64().unwrap();
                    self.seen.push(o);
                    self.last = o;
                }
                Event::Close(_) | Event::Ended => {
                    let (c, ack, replayed) =
                        Member::join(cluster, Some((self.last, &self.epoch))).await;
                    assert_eq!(ack["recovered"], true, "{ack}");
                    self.seen.extend(&replayed);
                    self.last = replayed.last().copied().unwrap_or(self.last);
                    self.node = c.welcome["node"].as_str().unwrap().to_owned();
                    self.c = c;
                    self.reconnects += 1;
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_the_balancer_span_the_nodes_and_survive_a_drain() {
    let cluster = LocalCluster::start();
    let mut members = Vec::new();
    for _ in 0..9 {
        members.push(Member::new(&cluster).await);
    }
    let mut nodes: Vec<String> = members.iter().map(|m| m.node.clone()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "round robin over every node: {nodes:?}");

    // A publisher through the balancer, steady, while node 1 drains.
    let mut publisher = cluster.connect().await;
    let publisher_node = publisher.welcome["node"].as_str().unwrap().to_owned();
    let drained = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| *n != publisher_node)
        .unwrap()
        .to_owned();
    // Six seconds of traffic: the drain (1 s delay, closes spread over 2 s) ends within it.
    let total = 120u64;
    let mut last = 0;
    for n in 1..=total {
        let ack = publisher
            .request(json!({"action":"publish","room":"chat:lb","data":n,"id":n}))
            .await;
        last = ack["offset"].as_u64().expect("an offset");
        if n == 20 {
            let (ok, out) = cluster.run(&["drain", &drained[5..]]);
            assert!(ok, "{out}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in members.iter_mut() {
        m.read_until(&cluster, last).await;
    }
    let first = last - total + 1;
    for m in &members {
        let expected: Vec<u64> = (first..=last).collect();
        assert_eq!(m.seen, expected, "no gap, no duplicate across the drain");
        assert_ne!(m.node, drained, "every client ended on a live node");
    }
    let moved = members.iter().filter(|m| m.reconnects > 0).count();
    assert!(moved >= 1, "the drained node's clients reconnected");
    let (ok, out) = cluster.run(&["status"]);
    assert!(ok, "{out}");
    let status: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 2, "{status}");
}
