//! SPEC section 3: `server.tls_cert_file` and `server.tls_key_file` serve `wss://` through the
//! same bounded outbound as `ws://`; the certificate reloads on SIGHUP without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsgate_tests::*;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// Connects to the node over TLS, trusting only `ca`, and reads the welcome.
async fn connect_wss(node: &Node, ca: &Path) -> anyhow::Result<(Wss, serde_json::Value)> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(node.client).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let req = format!("wss://localhost:{}/ws", node.client.port()).into_client_request()?;
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await?;
    let welcome = match tokio::time::timeout(WAIT, ws.next()).await? {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t)?,
        other => anyhow::bail!("expected a welcome, got {other:?}"),
    };
    Ok((ws, welcome))
}

/// The next JSON frame, skipping pings.
async fn recv(ws: &mut Wss) -> serde_json::Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_))) => continue,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }
}

fn tls_config(certs: &Certs) -> String {
    format!(
        "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        certs.cert.display(),
        certs.key.display()
    )
}

#[tokio::test]
async fn wss_serves_rooms_and_plain_ws_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let node = Node::start(&tls_config(&certs)).await;
    let (mut a, welcome) = connect_wss(&node, &certs.ca).await.unwrap();
    assert_eq!(welcome["type"], "welcome");
    let (mut b, _) = connect_wss(&node, &certs.ca).await.unwrap();
    for ws in [&mut a, &mut b] {
        ws.send(Message::text(
            json!({"action":"join","room":"r","id":1}).to_string(),
        ))
        .await
        .unwrap();
        assert_eq!(recv(ws).await["type"], "ack");
    }
    // Large enough to span several TLS records.
    let big = "x".repeat(40_000);
    for i in 0..20 {
        a.send(Message::text(
            json!({"action":"publish","room":"r","data":{"i":i,"pad":big},"exclude_self":true})
                .to_string(),
        ))
        .await
        .unwrap();
    }
    for i in 0..20 {
        assert_eq!(recv(&mut b).await["data"]["i"], i);
    }
    // A plain client on the TLS listener gets no WebSocket.
    assert!(node.connect_req(|_| {}).await.is_err());
}

/// A wss:// client that never reads is bounded in bytes like a ws:// one.
#[tokio::test]
async fn a_wss_client_that_never_reads_is_closed_1013() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let node = Node::start(&format!(
        "{}[limits]\nmessages_per_second = 100000\nmessages_burst = 100000\n",
        tls_config(&certs)
    ))
    .await;
    let (ws, _) = connect_wss(&node, &certs.ca).await.unwrap();
    let (_, code) = flood_unread_replies(ws, &node).await;
    assert_eq!(code, Some(1013));
}

/// SIGHUP reads the certificate files again: new connections get the new certificate, with
/// no restart.
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_certs(dir.path());
    let node = Node::start(&tls_config(&old)).await;
    assert!(connect_wss(&node, &old.ca).await.is_ok());
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = make_certs(fresh_dir.path());
    std::fs::copy(&fresh.cert, &old.cert).unwrap();
    std::fs::copy(&fresh.key, &old.key).unwrap();
    node.signal("HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if connect_wss(&node, &fresh.ca).await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "the new certificate is served");
    assert!(
        connect_wss(&node, &old.ca).await.is_err(),
        "the old one no longer"
    );
    // A broken file on reload keeps the certificate in force.
    std::fs::write(&old.cert, "not a certificate").unwrap();
    node.signal("HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(connect_wss(&node, &fresh.ca).await.is_ok());
}
