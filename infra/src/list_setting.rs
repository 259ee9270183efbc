//! A list setting that environment variables can set too: they carry one
//! string, so a list comes comma-separated (`AMQP__URLS=a,b`,
//! `AUTH__ERASURE__EXPECTED_SERVICES=task,billing`).

/// A list setting from a TOML array or, as environment variables give it,
/// one comma-separated string; entries are trimmed and empty ones dropped,
/// so `""` is the empty list.
pub fn deserialize_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    let items = match <List as serde::Deserialize>::deserialize(d)? {
        List::One(s) => s.split(',').map(str::to_owned).collect(),
        List::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect())
}
