//! `WSGATE_<SECTION>__<KEY>` environment variables, taken as text.
//!
//! figment's own `Env` provider parses every value, so `WSGATE_AUTH__JWT_SECRET=0123` would
//! reach the config as the number 123 and a secret would silently change. This provider keeps
//! each value exactly as written; numbers and booleans are read from that text where a key
//! wants one (`Figment::extract_lossy`), and strings stay strings.

use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// The environment under figment's `Env` naming (prefix, `__` for nesting), values unparsed.
pub struct RawEnv(pub Env);

impl Provider for RawEnv {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut dict = Dict::new();
        for (key, value) in self.0.iter() {
            let path: Vec<&str> = key.as_str().split('.').collect();
            insert(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Puts `value` at `path` (a.b.c) in nested dictionaries.
fn insert(dict: &mut Dict, path: &[&str], value: String) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), Value::from(value));
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}
