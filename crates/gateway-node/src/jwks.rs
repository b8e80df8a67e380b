//! JSON Web Key Sets (SPEC section 3): token keys by `kid` from `auth.jwks_file` or
//! `auth.jwks_url`.
//!
//! The set is loaded at start (a node that cannot read it does not start), refreshed every
//! `auth.jwks_refresh`, and refreshed early when a token names a `kid` the set does not hold
//! (an identity provider rotated its keys): at most one fetch is in flight, and unknown-`kid`
//! fetches are rate-limited, so tokens with made-up `kid`s cannot make the node hammer the
//! provider. A refresh that fails keeps the last good set: an identity provider that is down
//! must not lock every client out.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Unknown-`kid` refreshes start at most this often.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(5);

/// How long one fetch of `auth.jwks_url` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest key set read, in bytes: a key set is a few KiB.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One usable key of the set.
pub struct Key {
    /// The verification key.
    pub key: DecodingKey,
    /// The algorithm the set pins the key to (`alg`), if it does.
    pub alg: Option<Algorithm>,
}

/// Keys by `kid`.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// The key of a set with exactly one key, for tokens that name no `kid`.
    only: Option<Arc<Key>>,
}

impl KeySet {
    /// Parses a JWKS document; keys for encryption (`"use": "enc"`) and keys jsonwebtoken
    /// cannot use are skipped. A set with no usable key is an error.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<KeySet> {
        let set: JwkSet = serde_json::from_slice(bytes).context("not a JWKS document")?;
        let mut by_kid = HashMap::new();
        let mut usable = Vec::new();
        for jwk in &set.keys {
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                tracing::warn!(kid = ?jwk.common.key_id, "JWKS key skipped: unsupported");
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok());
            let key = Arc::new(Key { key, alg });
            if let Some(kid) = &jwk.common.key_id {
                by_kid.insert(kid.clone(), key.clone());
            }
            usable.push(key);
        }
        if usable.is_empty() {
            bail!("the key set holds no usable signing key");
        }
        let only = (usable.len() == 1).then(|| usable.remove(0));
        Ok(KeySet { by_kid, only })
    }

    /// The key for a token's `kid` (or the only key, for a token without one).
    pub fn get(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => self.only.clone(),
        }
    }

    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.by_kid.len().max(usize::from(self.only.is_some()))
    }

    /// Whether the set is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the set comes from.
enum Source {
    File(PathBuf),
    Url(String, reqwest::Client),
}

/// A key set kept fresh.
pub struct Jwks {
    source: Source,
    keys: ArcSwap<KeySet>,
    every: Duration,
    /// Held while fetching: at most one fetch in flight.
    fetching: tokio::sync::Mutex<()>,
    /// When the last unknown-`kid` refresh started.
    last_unknown: parking_lot::Mutex<Option<Instant>>,
}

impl Jwks {
    /// Checks what can be checked without the network (`check-config`): a file must hold a
    /// usable set, a URL must be an http(s) URL.
    pub fn check(file: &str, url: &str) -> anyhow::Result<()> {
        if !file.is_empty() {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading auth.jwks_file {file}"))?;
            KeySet::parse(&bytes).with_context(|| format!("auth.jwks_file {file}"))?;
        }
        if !url.is_empty() {
            let u = url::Url::parse(url).with_context(|| format!("auth.jwks_url {url:?}"))?;
            if !matches!(u.scheme(), "http" | "https") {
                bail!("auth.jwks_url {url:?}: not an http(s) URL");
            }
        }
        Ok(())
    }

    /// Loads the set from `auth.jwks_file` or `auth.jwks_url` (the file wins when both are
    /// set); fails when it cannot be read, so a node never starts unable to verify tokens.
    pub async fn load(file: &str, url: &str, every: Duration) -> anyhow::Result<Arc<Jwks>> {
        let source = if !file.is_empty() {
            Source::File(PathBuf::from(file))
        } else {
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .context("building the JWKS HTTP client")?;
            Source::Url(url.to_owned(), client)
        };
        let jwks = Jwks {
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            every,
            fetching: tokio::sync::Mutex::new(()),
            last_unknown: parking_lot::Mutex::new(None),
        };
        let set = jwks.fetch().await?;
        jwks.keys.store(Arc::new(set));
        Ok(Arc::new(jwks))
    }

    /// The key for `kid` in the current set.
    pub fn key(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        self.keys.load().get(kid)
    }

    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let bytes = match &self.source {
            Source::File(path) => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(p))
                    .await
                    .context("reading auth.jwks_file")?
                    .with_context(|| format!("reading auth.jwks_file {}", path.display()))?
            }
            Source::Url(url, client) => {
                let mut resp = client
                    .get(url)
                    .send()
                    .await
                    .with_context(|| format!("fetching auth.jwks_url {url}"))?
                    .error_for_status()
                    .with_context(|| format!("fetching auth.jwks_url {url}"))?;
                // Read in chunks and stop at the cap: a hostile or broken endpoint cannot
                // make the node hold more than that.
                let mut body = Vec::new();
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .with_context(|| format!("reading auth.jwks_url {url}"))?
                {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        bail!("auth.jwks_url {url}: over {MAX_JWKS_BYTES} bytes");
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
        };
        KeySet::parse(&bytes).context("parsing the key set")
    }

    /// Fetches the set again; the current set stays when the fetch fails. A refresh already
    /// in flight is waited for instead of starting another.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let _one = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Someone else is fetching: their result is ours.
                let _ = self.fetching.lock().await;
                return Ok(());
            }
        };
        let set = self.fetch().await?;
        tracing::debug!(keys = set.len(), "key set refreshed");
        self.keys.store(Arc::new(set));
        Ok(())
    }

    /// A token named a `kid` the set does not hold: refreshes, unless an unknown-`kid`
    /// refresh started within [`UNKNOWN_KID_INTERVAL`]. Returns whether it refreshed.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        {
            let mut last = self.last_unknown.lock();
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.refresh().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "key set refresh failed; keeping the last good set");
                false
            }
        }
    }

    /// Refreshes every `auth.jwks_refresh` until `stop`; a failure keeps the last good set.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval_at(Instant::now() + self.every, self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %format!("{e:#}"), "key set refresh failed; keeping the last good set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_KEYS: &str = r#"{"keys":[
        {"kty":"OKP","crv":"Ed25519","kid":"a","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"kty":"OKP","crv":"Ed25519","kid":"b","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    ]}"#;

    #[test]
    fn keys_by_kid_encryption_keys_skipped() {
        let set = KeySet::parse(TWO_KEYS.as_bytes()).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.get(Some("a")).unwrap().alg, Some(Algorithm::EdDSA));
        assert!(set.get(Some("b")).unwrap().alg.is_none());
        assert!(set.get(Some("enc")).is_none());
        assert!(set.get(None).is_none(), "two keys: a token must name one");
    }

    #[test]
    fn bad_sets_are_errors() {
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(br#"{"keys":[]}"#).is_err());
        assert!(KeySet::parse(b"not json").is_err());
        let one = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(KeySet::parse(one.as_bytes()).unwrap().get(None).is_some());
    }
}
