//! SPEC section 2: `check-config`, `token`, invalid configuration, environment overrides.

use wsgate_tests::*;

fn write(dir: &tempfile::TempDir, body: &str) -> String {
    let p = dir.path().join("c.toml");
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn check_config_prints_effective_settings_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "[auth]\njwt_secret = \"supersecret\"\n[admin]\ntoken = \"admintoken\"\n[server]\nheartbeat = \"10s\"\n");
    let (status, out, err) = run_cli(
        &["check-config", &p],
        &[("WSGATE_LIMITS__OUTBOUND_QUEUE", "77")],
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("heartbeat = \"10s\""), "{out}");
    assert!(
        out.contains("outbound_queue = 77"),
        "environment merged: {out}"
    );
    assert!(
        out.contains("drain_period = \"10s\""),
        "defaults merged: {out}"
    );
    assert!(
        !out.contains("supersecret") && !out.contains("admintoken"),
        "{out}"
    );
}

#[test]
fn invalid_config_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (body, key) in [
        ("[server]\nheartbeat = \"often\"\n", "heartbeat"),
        ("[limits]\nmax_bad_frames = 0\n", "limits.max_bad_frames"),
        ("[server]\nlisten_addr = \"x\"\n", "listen_addr"),
        ("[auth]\nalgorithms = [\"HS256\"]\n", "auth.jwt_secret"),
        (
            "[auth]\njwt_secret = \"s\"\nalgorithms = [\"none\"]\n",
            "auth.algorithms",
        ),
        // Accepted by the parser, refused by the node: check-config refuses them too.
        ("[cluster]\nredis_url = \"nonsense://x\"\n", "cluster.redis_url"),
        (
            "[cluster]\nredis_url = \"rediss://127.0.0.1:1\"\nredis_ca_file = \"/nonexistent.pem\"\n",
            "redis_ca_file",
        ),
        (
            "[auth]\nalgorithms = [\"RS256\"]\njwt_public_key_file = \"/nonexistent.pem\"\n",
            "auth.jwt_public_key_file",
        ),
        (
            "[auth]\nalgorithms = [\"RS256\"]\njwks_url = \"ftp://127.0.0.1/jwks\"\n",
            "auth.jwks_url",
        ),
        (
            "[auth]\nalgorithms = [\"RS256\"]\njwks_file = \"/nonexistent.json\"\n",
            "auth.jwks_file",
        ),
        (
            "[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\n",
            "telemetry.otlp_endpoint",
        ),
        (
            "[[proxy]]\npath = \"/p\"\nupstreams = [\"http://127.0.0.1:1\"]\n",
            "proxy.upstreams",
        ),
        (
            "[[proxy]]\npath = \"/ws\"\nupstreams = [\"ws://127.0.0.1:1\"]\n",
            "proxy.path",
        ),
        (
            "[[proxy]]\npath = \"/p\"\nupstreams = [\"ws://127.0.0.1:1\"]\nauth = \"jwt\"\n",
            "proxy.auth",
        ),
        ("[[history]]\nrooms = [\"a\"]\nsize = 0\n", "history.size"),
        (
            "[limits]\noutbound_queue = 10\n[[history]]\nrooms = [\"a\"]\nsize = 11\n",
            "history.size",
        ),
        ("[[history]]\nrooms = []\n", "history.rooms"),
        ("[[presence]]\nrooms = []\nevents = true\n", "presence.rooms"),
        ("[[history]]\nrooms = [\"a\"]\nttl = \"0s\"\n", "history.ttl"),
    ] {
        let p = write(&dir, body);
        let (status, _, err) = run_cli(&["check-config", &p], &[]);
        assert!(!status.success(), "{body}");
        assert!(err.contains(key), "{body}: {err}");
        let (status, _, err) = run_cli(
            &[
                "--config",
                &p,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &[],
        );
        assert!(!status.success(), "the node refuses to start: {body}");
        assert!(err.contains(key), "{body}: {err}");
    }
    let (status, _, err) = run_cli(&["check-config", "/nonexistent/wsgate.toml"], &[]);
    assert!(!status.success());
    assert!(err.contains("/nonexistent/wsgate.toml"), "{err}");
}

#[test]
fn env_turns_auth_on_and_token_uses_it() {
    let (status, out, err) = run_cli(
        &["token", "--sub", "bob", "--rooms", "a:*,b", "--ttl", "10m"],
        &[("WSGATE_AUTH__JWT_SECRET", "envsecret")],
    );
    assert!(status.success(), "{err}");
    let token = out.trim();
    assert_eq!(out.lines().count(), 1);
    let claims = token.split('.').nth(1).unwrap();
    use base64_decode::decode;
    let claims: serde_json::Value = serde_json::from_slice(&decode(claims)).unwrap();
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["rooms"], serde_json::json!(["a:*", "b"]));
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 600);
    let (status, _, err) = run_cli(&["token", "--sub", "bob"], &[]);
    assert!(!status.success());
    assert!(err.contains("auth"), "{err}");
}

#[tokio::test]
async fn minted_token_is_accepted_by_a_node_configured_by_env() {
    let node =
        Node::start_with(NodeOptions::config("").env("WSGATE_AUTH__JWT_SECRET", "envsecret")).await;
    assert_eq!(
        refusal(node.connect_req(|_| {}).await.err().unwrap()).0,
        401,
        "env alone turns auth on"
    );
    let (_, out, _) = run_cli(
        &["token", "--sub", "eve"],
        &[("WSGATE_AUTH__JWT_SECRET", "envsecret")],
    );
    assert!(connect_bearer(&node, out.trim()).await.is_ok());
}

/// Base64url without padding, enough to read a JWT's claims.
mod base64_decode {
    pub fn decode(s: &str) -> Vec<u8> {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes() {
            let v = alphabet.iter().position(|&a| a == c).unwrap() as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        out
    }
}

/// `gateway-node healthcheck` (a container's HEALTHCHECK): 0 when `/healthz` answers 200,
/// 1 when the node is unreachable or answers anything else.
#[tokio::test]
async fn healthcheck_exits_zero_only_on_a_healthy_node() {
    let node = Node::start("").await;
    let url = node.admin_url("/healthz");
    let (status, _, err) =
        tokio::task::spawn_blocking(move || run_cli(&["healthcheck", "--url", &url], &[]))
            .await
            .unwrap();
    assert!(status.success(), "{err}");
    let url = node.admin_url("/nowhere");
    let (status, _, err) =
        tokio::task::spawn_blocking(move || run_cli(&["healthcheck", "--url", &url], &[]))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(1), "a 404 is unhealthy: {err}");
    let (status, _, err) = run_cli(&["healthcheck", "--url", "http://127.0.0.1:1/healthz"], &[]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
