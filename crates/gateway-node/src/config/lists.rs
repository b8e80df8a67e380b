//! Lists in configuration: a TOML array in the file, a comma-separated string in the
//! environment (`WSGATE_AUTH__ALGORITHMS=HS256,RS256`), as SPEC section 13 says.

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrString {
    List(Vec<String>),
    String(String),
}

/// Deserializes a list of strings from an array or a comma-separated string.
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(v) => v,
        ListOrString::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}
