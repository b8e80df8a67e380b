//! Publishing to a Pusher-protocol gateway (Soketi, Sockudo) the way a Pusher backend does:
//! a signed `POST /apps/{app_id}/events` (Pusher's HTTP API, auth version 1.0).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hmac::{Hmac, Mac};
use md5::Digest;
use sha2::Sha256;

/// A Pusher app's credentials: `ID:KEY:SECRET` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The app id (in the events path).
    pub id: String,
    /// The app key (in socket URLs and in every signed request).
    pub key: String,
    /// The secret that signs requests.
    pub secret: String,
}

impl std::str::FromStr for App {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.splitn(3, ':').collect::<Vec<_>>()[..] {
            [id, key, secret] if !id.is_empty() && !key.is_empty() && !secret.is_empty() => {
                Ok(Self {
                    id: id.to_owned(),
                    key: key.to_owned(),
                    secret: secret.to_owned(),
                })
            }
            _ => Err(format!("expected ID:KEY:SECRET, got {s:?}")),
        }
    }
}

/// Publishes events of one app to one gateway node.
#[derive(Clone)]
pub struct Publisher {
    client: reqwest::Client,
    /// `http://HOST:PORT`.
    base: String,
    app: App,
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Publisher {
    /// A publisher to the node serving `ws_url` (`ws://HOST:PORT/app/KEY...`): the HTTP API
    /// is on the same host and port.
    pub fn new(ws_url: &str, app: App) -> anyhow::Result<Self> {
        let rest = ws_url
            .strip_prefix("ws://")
            .context("Pusher publishing needs a ws:// URL")?;
        let host_port = rest.split('/').next().unwrap_or(rest);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            base: format!("http://{host_port}"),
            app,
        })
    }

    /// The query string (with `auth_signature`) for a POST of `body` to `path` at
    /// `timestamp` (seconds).
    pub fn signed_query(&self, path: &str, body: &str, timestamp: u64) -> String {
        let body_md5 = hex(&md5::Md5::digest(body.as_bytes()));
        let params = format!(
            "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={body_md5}",
            self.app.key
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(self.app.secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(format!("POST\n{path}\n{params}").as_bytes());
        format!(
            "{params}&auth_signature={}",
            hex(&mac.finalize().into_bytes())
        )
    }

    /// Triggers event `msg` on `channel` with `data` (a JSON text, sent as Pusher's string
    /// `data`). `Err` carries the gateway's answer when it refused.
    pub async fn publish(&self, channel: &str, data: &str) -> Result<(), String> {
        let body =
            serde_json::json!({"name": "msg", "channels": [channel], "data": data}).to_string();
        let path = format!("/apps/{}/events", self.app.id);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let url = format!(
            "{}{path}?{}",
            self.base,
            self.signed_query(&path, &body, now)
        );
        let res = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("events API: {e}"))?;
        if res.status().is_success() {
            Ok(())
        } else {
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            Err(format!("events API answered {status}: {text}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_parse() {
        let app: App = "1:k:s:with:colons".parse().unwrap();
        assert_eq!(
            (app.id.as_str(), app.secret.as_str()),
            ("1", "s:with:colons")
        );
        assert!("1:k".parse::<App>().is_err());
        assert!("1::s".parse::<App>().is_err());
    }

    #[test]
    fn signatures_follow_pusher_auth_version_1() {
        // The worked example of Pusher's HTTP API reference (app 3, key 278d425bdf160c739803,
        // secret 7ad3773142a6692b25b8, timestamp 1353088179).
        let p = Publisher::new(
            "ws://127.0.0.1:6001/app/278d425bdf160c739803",
            "3:278d425bdf160c739803:7ad3773142a6692b25b8"
                .parse()
                .unwrap(),
        )
        .unwrap();
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = p.signed_query("/apps/3/events", body, 1_353_088_179);
        assert!(
            q.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"),
            "{q}"
        );
        assert!(
            q.ends_with(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{q}"
        );
        assert!(Publisher::new("wss://x/app/k", p.app.clone()).is_err());
    }
}
