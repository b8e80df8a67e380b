//! SPEC section 3: token keys from a JWKS (`auth.jwks_url`, `auth.jwks_file`), by `kid`,
//! refreshed periodically and on an unknown `kid` (rate-limited), the last good set kept when a
//! refresh fails. The key server is a real HTTP server on loopback that rotates its keys.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgate_tests::*;

/// An Ed25519 signing key with its `kid`.
struct SigningKey {
    kid: String,
    pem: String,
    x: String,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        SigningKey {
            kid: kid.into(),
            pem: pair.serialize_pem(),
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        json!({"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":self.kid,"x":self.x})
    }

    /// A token for `sub`, valid for an hour, naming this key's `kid`.
    fn token(&self, sub: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        encode(
            &header,
            &json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_ed_pem(self.pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

/// A JWKS endpoint on loopback: serves the current set, counts requests, can be made to fail.
struct KeyServer {
    url: String,
    set: Arc<Mutex<String>>,
    requests: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

impl KeyServer {
    async fn start(keys: &[&SigningKey]) -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let server = KeyServer {
            url,
            set: Arc::new(Mutex::new(String::new())),
            requests: Arc::new(AtomicU64::new(0)),
            failing: Arc::new(AtomicBool::new(false)),
        };
        server.publish(keys);
        let (set, requests, failing) = (
            server.set.clone(),
            server.requests.clone(),
            server.failing.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let (set, requests, failing) = (set.clone(), requests.clone(), failing.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if failing.load(Ordering::SeqCst) {
                        ("500 Internal Server Error", "{}".to_owned())
                    } else {
                        ("200 OK", set.lock().unwrap().clone())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(resp.as_bytes()).await;
                });
            }
        });
        server
    }

    /// Serves these keys from now on.
    fn publish(&self, keys: &[&SigningKey]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        *self.set.lock().unwrap() = set.to_string();
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn config(url: &str, refresh: &str) -> String {
    format!(
        "[auth]\nalgorithms = [\"EdDSA\"]\njwks_url = \"{url}\"\njwks_refresh = \"{refresh}\"\n"
    )
}

#[tokio::test]
async fn keys_rotate_by_kid_and_a_failing_server_keeps_the_last_good_set() {
    let k1 = SigningKey::new("k1");
    let server = KeyServer::start(&[&k1]).await;
    let node = Node::start(&config(&server.url, "1h")).await;
    assert_eq!(server.requests(), 1, "loaded once at start");
    let c = connect_bearer(&node, &k1.token("alice")).await.unwrap();
    let (_, v) = node.get(&format!("/@connections/{}", c.id())).await;
    assert_eq!(v["identity"]["sub"], "alice");

    // The provider rotates: k2 appears. A token with the new kid is accepted at once (the
    // unknown kid triggers a refresh), without waiting for the hourly refresh.
    let k2 = SigningKey::new("k2");
    server.publish(&[&k1, &k2]);
    assert!(connect_bearer(&node, &k2.token("bob")).await.is_ok());
    assert_eq!(server.requests(), 2);

    // A flood of made-up kids is refused and makes at most one more fetch (rate-limited).
    let forged = SigningKey::new("forged");
    for i in 0..20 {
        let k = SigningKey {
            kid: format!("nope-{i}"),
            pem: forged.pem.clone(),
            x: forged.x.clone(),
        };
        let (status, _, _) = refusal(connect_bearer(&node, &k.token("eve")).await.err().unwrap());
        assert_eq!(status, 401);
    }
    assert!(server.requests() <= 3, "{} fetches", server.requests());

    // The server fails: known keys still verify.
    server.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let k3 = SigningKey::new("k3");
    let (status, _, _) = refusal(connect_bearer(&node, &k3.token("x")).await.err().unwrap());
    assert_eq!(status, 401, "an unknown kid while the server fails");
    assert!(connect_bearer(&node, &k1.token("alice")).await.is_ok());
    assert!(connect_bearer(&node, &k2.token("bob")).await.is_ok());
}

#[tokio::test]
async fn the_set_is_refreshed_every_jwks_refresh() {
    let k1 = SigningKey::new("k1");
    let server = KeyServer::start(&[&k1]).await;
    let node = Node::start(&config(&server.url, "300ms")).await;
    // k1 is retired: after a periodic refresh, its tokens are refused.
    let k2 = SigningKey::new("k2");
    server.publish(&[&k2]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(server.requests() >= 2, "{} fetches", server.requests());
    let (status, _, _) = refusal(connect_bearer(&node, &k1.token("old")).await.err().unwrap());
    assert_eq!(status, 401);
    assert!(connect_bearer(&node, &k2.token("new")).await.is_ok());
}

#[tokio::test]
async fn a_jwks_file_works_and_an_unreachable_url_fails_the_start() {
    let k1 = SigningKey::new("k1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys":[k1.jwk()]}).to_string()).unwrap();
    let node = Node::start(&format!(
        "[auth]\nalgorithms = [\"EdDSA\"]\njwks_file = \"{}\"\n",
        path.display()
    ))
    .await;
    assert!(connect_bearer(&node, &k1.token("filed")).await.is_ok());

    let port = free_port();
    let err = start_refused(
        &[],
        &[
            ("WSGATE_AUTH__ALGORITHMS", "EdDSA"),
            (
                "WSGATE_AUTH__JWKS_URL",
                &format!("http://127.0.0.1:{port}/jwks"),
            ),
        ],
    );
    assert!(err.contains("auth.jwks_url"), "{err}");
}
