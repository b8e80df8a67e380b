//! Route selection (SPEC section 6): which integration a client frame that is not a built-in
//! action goes to, by `routes.selection_expression`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::config::{RouteConfig, RoutesConfig};

/// The route key `$default` matches every key no custom route has.
pub const DEFAULT_KEY: &str = "$default";

/// One integration.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Where the call goes.
    pub url: reqwest::Url,
    /// The call's time limit.
    pub timeout: Duration,
    /// Whether a 2xx answer goes back to the client as `route_response`.
    pub response: bool,
}

impl Route {
    fn from_config(key: &str, c: &RouteConfig) -> anyhow::Result<Route> {
        let url = reqwest::Url::parse(&c.url)
            .with_context(|| format!("routes {key}: url {:?}", c.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("routes {key}: url {:?} is not http(s)", c.url);
        }
        Ok(Route {
            url,
            timeout: c.timeout,
            response: c.response,
        })
    }
}

/// Where a frame goes.
#[derive(Debug, PartialEq)]
pub enum Selected<'a> {
    /// To this route, under this route key (the frame's key, or `$default`).
    Route(&'a Route, String),
    /// No route for this key and no `$default`: `unknown_action`.
    Unknown(String),
    /// The expression finds no string or number, and there is no `$default`: `bad_request`.
    NoKey,
}

/// The routes of `[routes]`.
#[derive(Debug)]
pub struct RouteTable {
    /// The dotted path after `$request.body.`.
    path: Vec<String>,
    custom: HashMap<String, Route>,
    default: Option<Route>,
    /// `$connect`: asked before the upgrade.
    pub connect: Option<Route>,
    /// `$disconnect`: told after the close.
    pub disconnect: Option<Route>,
}

impl RouteTable {
    /// The table, or `None` when no route is configured.
    pub fn from_config(c: &RoutesConfig) -> anyhow::Result<Option<RouteTable>> {
        let path = parse_expression(&c.selection_expression)?;
        if !c.any() {
            return Ok(None);
        }
        let custom = c
            .custom
            .iter()
            .map(|(k, r)| Ok((k.clone(), Route::from_config(k, r)?)))
            .collect::<anyhow::Result<HashMap<_, _>>>()?;
        let default = c
            .default
            .as_ref()
            .map(|r| Route::from_config(DEFAULT_KEY, r))
            .transpose()?;
        let connect = c
            .connect
            .as_ref()
            .map(|r| Route::from_config("$connect", r))
            .transpose()?;
        let disconnect = c
            .disconnect
            .as_ref()
            .map(|r| Route::from_config("$disconnect", r))
            .transpose()?;
        Ok(Some(RouteTable {
            path,
            custom,
            default,
            connect,
            disconnect,
        }))
    }

    /// The route of a frame (as JSON): its key by the expression, then the custom routes, then
    /// `$default`.
    pub fn select(&self, frame: &Value) -> Selected<'_> {
        let key = self
            .path
            .iter()
            .try_fold(frame, |v, field| v.get(field))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        match (key, &self.default) {
            (Some(key), default) => match (self.custom.get(&key), default) {
                (Some(route), _) => Selected::Route(route, key),
                (None, Some(d)) => Selected::Route(d, DEFAULT_KEY.into()),
                (None, None) => Selected::Unknown(key),
            },
            (None, Some(d)) => Selected::Route(d, DEFAULT_KEY.into()),
            (None, None) => Selected::NoKey,
        }
    }
}

/// `$request.body.a.b` → `["a", "b"]`.
pub fn parse_expression(expr: &str) -> anyhow::Result<Vec<String>> {
    let Some(rest) = expr.strip_prefix("$request.body.") else {
        bail!("routes.selection_expression {expr:?} must start with $request.body.");
    };
    let path: Vec<String> = rest.split('.').map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        bail!("routes.selection_expression {expr:?} has an empty field name");
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(url: &str) -> RouteConfig {
        RouteConfig {
            url: url.into(),
            timeout: Duration::from_secs(1),
            response: false,
        }
    }

    #[test]
    fn keys_by_dotted_path_then_custom_then_default() {
        let mut c = RoutesConfig {
            selection_expression: "$request.body.meta.kind".into(),
            ..RoutesConfig::default()
        };
        c.custom
            .insert("chat".into(), route("http://127.0.0.1:1/chat"));
        c.custom
            .insert("7".into(), route("http://127.0.0.1:1/seven"));
        let t = RouteTable::from_config(&c).unwrap().unwrap();
        let path_of = |s: Selected<'_>| match s {
            Selected::Route(r, k) => format!("{}:{k}", r.url.path()),
            other => format!("{other:?}"),
        };
        assert_eq!(
            path_of(t.select(&json!({"meta":{"kind":"chat"}}))),
            "/chat:chat"
        );
        assert_eq!(path_of(t.select(&json!({"meta":{"kind":7}}))), "/seven:7");
        assert_eq!(
            t.select(&json!({"meta":{"kind":"other"}})),
            Selected::Unknown("other".into())
        );
        assert_eq!(t.select(&json!({"meta":{"kind":{}}})), Selected::NoKey);
        assert_eq!(t.select(&json!({"action":"chat"})), Selected::NoKey);
        c.default = Some(route("http://127.0.0.1:1/default"));
        let t = RouteTable::from_config(&c).unwrap().unwrap();
        assert_eq!(
            path_of(t.select(&json!({"meta":{"kind":"other"}}))),
            "/default:$default"
        );
        assert_eq!(
            path_of(t.select(&json!({"nothing":1}))),
            "/default:$default"
        );
    }

    #[test]
    fn bad_expressions_and_urls_are_refused() {
        assert!(parse_expression("$request.body.").is_err());
        assert!(parse_expression("request.body.action").is_err());
        assert!(parse_expression("$request.body.a..b").is_err());
        let mut c = RoutesConfig::default();
        c.custom.insert("x".into(), route("ftp://h/x"));
        assert!(RouteTable::from_config(&c).is_err());
        assert!(RouteTable::from_config(&RoutesConfig::default())
            .unwrap()
            .is_none());
    }
}
