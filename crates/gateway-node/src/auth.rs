//! Handshake authentication (SPEC section 3): where the token is found, how it is verified,
//! and what its claims allow.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use http::HeaderMap;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use protocol::room::{any_matches, RoomPattern};

use crate::config::{AuthConfig, RoomPolicy};
use crate::jwks::Jwks;

/// 9999-12-31T23:59:59Z: the latest `exp` taken as it is; later ones are clamped to it.
const MAX_EXP_SECS: u64 = 253_402_300_799;

/// What a verified token says about a connection.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The `sub` claim.
    pub sub: Option<String>,
    /// The `rooms` claim: patterns the connection may join and publish to.
    pub rooms: Option<Vec<RoomPattern>>,
    /// The `exp` claim, Unix seconds.
    pub exp: u64,
    /// Every claim, for integrations (`requestContext.identity.claims`).
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

/// The claims wsgate reads; the rest (`iss`, `aud`, `nbf`) jsonwebtoken checks itself.
#[derive(Debug, serde::Deserialize)]
struct Claims {
    /// Required: unix seconds.
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    /// Room patterns the token allows.
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Why a handshake token was refused; the label of `wsgate_auth_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token anywhere it is looked for.
    #[error("missing token")]
    Missing,
    /// Bad signature, algorithm, claims or format.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The token names a key the key set does not hold (yet).
    #[error("invalid token: unknown key {0:?}")]
    UnknownKid(String),
}

impl AuthError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(_) | AuthError::UnknownKid(_) => "invalid",
            AuthError::Expired => "expired",
        }
    }
}

/// Verifies tokens with the configured keys and algorithms.
pub struct Authenticator {
    config: AuthConfig,
    algorithms: Vec<Algorithm>,
    /// One key per algorithm family (a token's `alg` picks the family).
    keys: Vec<(AlgorithmFamily, DecodingKey)>,
    /// Keys by `kid` from `auth.jwks_file` or `auth.jwks_url`, once loaded.
    jwks: Option<Arc<Jwks>>,
}

fn parse_alg(name: &str) -> anyhow::Result<Algorithm> {
    name.parse::<Algorithm>()
        .map_err(|_| anyhow::anyhow!("unknown algorithm {name:?} in auth.algorithms"))
}

impl Authenticator {
    /// Loads the keys named by the config.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Authenticator> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| parse_alg(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Jwks::check(&config.jwks_file, &config.jwks_url)?;
        let mut keys: Vec<(AlgorithmFamily, DecodingKey)> = Vec::new();
        if !config.jwt_secret.is_empty() {
            keys.push((
                AlgorithmFamily::Hmac,
                DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            ));
        }
        if !config.jwt_public_key_file.is_empty() {
            let pem = std::fs::read(&config.jwt_public_key_file).with_context(|| {
                format!(
                    "reading auth.jwt_public_key_file {}",
                    config.jwt_public_key_file
                )
            })?;
            for alg in &algorithms {
                let family = alg.family();
                if family == AlgorithmFamily::Hmac || keys.iter().any(|(f, _)| *f == family) {
                    continue;
                }
                let key = match family {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                    AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
                    AlgorithmFamily::Hmac => continue,
                }
                .with_context(|| {
                    format!(
                        "auth.jwt_public_key_file {} is not a {family:?} public key (for {alg:?})",
                        config.jwt_public_key_file
                    )
                })?;
                keys.push((family, key));
            }
        }
        Ok(Authenticator {
            config: config.clone(),
            algorithms,
            keys,
            jwks: None,
        })
    }

    /// Whether `[auth]` names a key set, which [`Authenticator::with_jwks`] must then supply.
    pub fn wants_jwks(&self) -> bool {
        !self.config.jwks_file.is_empty() || !self.config.jwks_url.is_empty()
    }

    /// Adds the loaded key set.
    pub fn with_jwks(mut self, jwks: Arc<Jwks>) -> Authenticator {
        self.jwks = Some(jwks);
        self
    }

    /// Verifies a token; when it names a `kid` the key set does not hold, refreshes the set
    /// (rate-limited, see [`Jwks::refresh_for_unknown_kid`]) and tries once more, so tokens
    /// signed with a freshly rotated key are accepted at once.
    pub async fn verify_fresh(&self, token: &str) -> Result<Identity, AuthError> {
        match (self.verify(token), &self.jwks) {
            (Err(AuthError::UnknownKid(_)), Some(jwks)) if jwks.refresh_for_unknown_kid().await => {
                self.verify(token)
            }
            (result, _) => result,
        }
    }

    /// The auth configuration in force.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Finds the token: `Authorization: Bearer`, then the query parameters in order, then the
    /// cookie.
    pub fn find_token(&self, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
        if let Some(v) = headers.get(http::header::AUTHORIZATION) {
            if let Some(t) = v.to_str().ok().and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            }) {
                return Some(t.trim().to_owned());
            }
        }
        if let Some(q) = query {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap_or_default();
            for name in &self.config.query_params {
                if let Some((_, v)) = pairs.iter().find(|(k, v)| k == name && !v.is_empty()) {
                    return Some(v.clone());
                }
            }
        }
        if !self.config.cookie.is_empty() {
            for header in headers.get_all(http::header::COOKIE) {
                let Ok(header) = header.to_str() else {
                    continue;
                };
                let found = cookie::Cookie::split_parse(header)
                    .flatten()
                    .find(|c| c.name() == self.config.cookie && !c.value().is_empty());
                if let Some(c) = found {
                    return Some(c.value().to_owned());
                }
            }
        }
        None
    }

    /// Verifies a token: signature with a pinned algorithm (so `alg: none` and algorithm
    /// confusion fail), `exp` required, `nbf` when present, `iss`/`aud` when configured.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let configured = self
            .keys
            .iter()
            .find(|(f, _)| *f == header.alg.family())
            .map(|(_, k)| k);
        let from_set = self
            .jwks
            .as_ref()
            .and_then(|j| j.key(header.kid.as_deref()));
        let key = match (&from_set, configured) {
            (Some(k), _) => {
                // A key the set pins to one algorithm verifies only that one.
                if k.alg.is_some_and(|alg| alg != header.alg) {
                    return Err(AuthError::Invalid(format!(
                        "key {:?} is not for {:?}",
                        header.kid, header.alg
                    )));
                }
                &k.key
            }
            (None, Some(k)) => k,
            (None, None) => {
                return Err(match (&self.jwks, header.kid) {
                    (Some(_), Some(kid)) => AuthError::UnknownKid(kid),
                    _ => AuthError::Invalid(format!("no key for {:?}", header.alg)),
                })
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if !self.config.issuer.is_empty() {
            validation.set_issuer(&[&self.config.issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        if self.config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&self.config.audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let Claims { exp, sub, rooms } =
            serde_json::from_value(serde_json::Value::Object(data.claims.clone()))
                .map_err(|e| AuthError::Invalid(format!("claims: {e}")))?;
        Ok(Identity {
            sub,
            rooms: rooms.map(|r| r.iter().map(RoomPattern::new).collect()),
            exp,
            claims: Arc::new(data.claims),
        })
    }

    /// When a connection with this identity must close with 4001: `exp` plus the leeway.
    pub fn expiry(&self, identity: &Identity) -> SystemTime {
        // `exp` is the token's to choose: one near `u64::MAX` would overflow `SystemTime`
        // (a panic). Past the year 9999 it is "never" for every purpose here.
        let exp = identity.exp.min(MAX_EXP_SECS);
        UNIX_EPOCH + Duration::from_secs(exp) + self.config.leeway
    }
}

/// Whether the identity may join or publish to `room`. Anonymous connections (no `[auth]`)
/// may use any room.
pub fn room_allowed(identity: Option<&Identity>, policy: RoomPolicy, room: &str) -> bool {
    let Some(identity) = identity else {
        return true;
    };
    match &identity.rooms {
        Some(patterns) => any_matches(patterns, room),
        None => policy == RoomPolicy::Allow,
    }
}

/// Mints a development token with the configured HS* secret (`gateway-node token`).
pub fn mint(
    config: &AuthConfig,
    sub: &str,
    rooms: Option<&[String]>,
    ttl: Duration,
) -> anyhow::Result<String> {
    if config.jwt_secret.is_empty() {
        bail!("auth.jwt_secret is not set: `token` signs with the configured HS* secret");
    }
    let alg = config
        .algorithms
        .iter()
        .find(|a| a.starts_with("HS"))
        .map(|a| parse_alg(a))
        .transpose()?
        .unwrap_or(Algorithm::HS256);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({ "sub": sub, "iat": now, "exp": now + ttl.as_secs() });
    if let Some(rooms) = rooms {
        claims["rooms"] = serde_json::json!(rooms);
    }
    if !config.issuer.is_empty() {
        claims["iss"] = config.issuer.clone().into();
    }
    if !config.audience.is_empty() {
        claims["aud"] = config.audience.clone().into();
    }
    Ok(jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(config.jwt_secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            jwt_secret: "secret".into(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let auth = Authenticator::from_config(&config()).unwrap();
        let t = mint(
            &config(),
            "alice",
            Some(&["chat:*".to_string()]),
            Duration::from_secs(60),
        )
        .unwrap();
        let id = auth.verify(&t).unwrap();
        assert_eq!(id.sub.as_deref(), Some("alice"));
        assert!(room_allowed(Some(&id), RoomPolicy::Deny, "chat:1"));
        assert!(!room_allowed(Some(&id), RoomPolicy::Allow, "other"));
    }

    #[test]
    fn an_exp_near_the_end_of_time_is_clamped_not_a_panic() {
        let auth = Authenticator::from_config(&config()).unwrap();
        for exp in [i64::MAX as u64, u64::MAX / 2, 253_402_300_800] {
            let t = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &serde_json::json!({"sub": "x", "exp": exp}),
                &EncodingKey::from_secret(b"secret"),
            )
            .unwrap();
            match auth.verify(&t) {
                Ok(id) => {
                    let at = auth.expiry(&id);
                    assert!(at > SystemTime::now(), "{exp}");
                }
                Err(e) => assert!(matches!(e, AuthError::Invalid(_)), "{exp}: {e:?}"),
            }
        }
    }

    #[test]
    fn wrong_secret_none_alg_and_expiry_are_refused() {
        let auth = Authenticator::from_config(&config()).unwrap();
        let other = AuthConfig {
            jwt_secret: "other".into(),
            ..AuthConfig::default()
        };
        let t = mint(&other, "bob", None, Duration::from_secs(60)).unwrap();
        assert!(matches!(auth.verify(&t), Err(AuthError::Invalid(_))));
        // alg: none, with a valid-looking body.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(matches!(auth.verify(none), Err(AuthError::Invalid(_))));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "x", "exp": now - 60}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "x"}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(auth.verify(&no_exp), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn token_sources_in_order() {
        let mut cfg = config();
        cfg.cookie = "session".into();
        let auth = Authenticator::from_config(&cfg).unwrap();
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; session=C".parse().unwrap());
        assert_eq!(
            auth.find_token(&h, Some("x=1&access_token=Q")),
            Some("Q".into())
        );
        assert_eq!(
            auth.find_token(&h, Some("jwt=J&access_token=Q")),
            Some("J".into())
        );
        assert_eq!(auth.find_token(&h, None), Some("C".into()));
        h.insert(http::header::AUTHORIZATION, "Bearer H".parse().unwrap());
        assert_eq!(auth.find_token(&h, Some("jwt=J")), Some("H".into()));
        assert_eq!(auth.find_token(&HeaderMap::new(), None), None);
    }

    #[test]
    fn default_policy_applies_without_a_rooms_claim() {
        let id = Identity {
            sub: None,
            rooms: None,
            exp: 0,
            claims: Arc::default(),
        };
        assert!(room_allowed(Some(&id), RoomPolicy::Allow, "x"));
        assert!(!room_allowed(Some(&id), RoomPolicy::Deny, "x"));
        assert!(room_allowed(None, RoomPolicy::Deny, "x"));
    }

    /// A P-256 test key pair (generated for these tests only).
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgAiNzEzjLi39IsIe6\nkfiBV1uh4vXaVS893N9B9/z9kRKhRANCAARPte5DNhl7YMYkJvAuliIiSWEqBtec\nc+gaZTYUMsXsHmvzD1KKD3oqYxrijvbtrQh+NempKD3zmF9E9ZPIRBf7\n-----END PRIVATE KEY-----\n";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAET7XuQzYZe2DGJCbwLpYiIklhKgbX\nnHPoGmU2FDLF7B5r8w9Sig96KmMa4o727a0IfjXpqSg985hfRPWTyEQX+w==\n-----END PUBLIC KEY-----\n";

    #[test]
    fn es256_with_a_pem_key_and_no_algorithm_confusion() {
        let dir = std::env::temp_dir().join(format!("wsgate-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let public = dir.join("ec.pub.pem");
        std::fs::write(&public, EC_PUBLIC).unwrap();
        let cfg = AuthConfig {
            jwt_public_key_file: public.to_str().unwrap().into(),
            algorithms: vec!["ES256".into()],
            ..AuthConfig::default()
        };
        let auth = Authenticator::from_config(&cfg).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({"sub": "svc", "exp": now + 60});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(auth.verify(&token).unwrap().sub.as_deref(), Some("svc"));
        // HS256 signed with the public key as the HMAC secret: the classic confusion attack.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert!(matches!(auth.verify(&forged), Err(AuthError::Invalid(_))));
    }
}
