//! Docker's `filters` query parameter: `{"key":{"value":true}}`, or the older `{"key":["value"]}`.

use std::collections::{BTreeMap, BTreeSet};

use super::error::ControlError;
use super::records::NodeRecord;
use super::services::ServiceRecord;
use super::tasks::TaskRecord;

/// Bounds on a filter, which arrives straight from the query string.
const MAX_FILTER_BYTES: usize = 16 * 1024;
const MAX_VALUES: usize = 64;

#[derive(Debug, Default)]
pub struct Filters(BTreeMap<String, BTreeSet<String>>);

impl Filters {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Filters, ControlError> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(Filters::default());
        };
        if raw.len() > MAX_FILTER_BYTES {
            return Err(ControlError::InvalidArgument(format!(
                "filters are too long: at most {MAX_FILTER_BYTES} bytes are accepted"
            )));
        }
        let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
            ControlError::InvalidArgument(format!(
                "invalid filter: {e}; expected JSON such as {{\"role\":{{\"manager\":true}}}}"
            ))
        })?;
        let obj = value.as_object().ok_or_else(|| {
            ControlError::InvalidArgument(
                "invalid filter: expected a JSON object of filter names".into(),
            )
        })?;
        let mut out = BTreeMap::new();
        for (key, values) in obj {
            if !allowed.contains(&key.as_str()) {
                return Err(ControlError::InvalidArgument(format!(
                    "Invalid filter '{key}'"
                )));
            }
            let set: BTreeSet<String> = match values {
                serde_json::Value::Object(m) => m
                    .iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(v, _)| v.clone())
                    .collect(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            ControlError::InvalidArgument(format!(
                                "invalid filter '{key}': values must be strings"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(ControlError::InvalidArgument(format!(
                        "invalid filter '{key}': expected an object or a list of values"
                    )))
                }
            };
            if set.len() > MAX_VALUES {
                return Err(ControlError::InvalidArgument(format!(
                    "invalid filter '{key}': at most {MAX_VALUES} values are accepted"
                )));
            }
            out.insert(key.clone(), set);
        }
        Ok(Filters(out))
    }

    fn values(&self, key: &str) -> Option<&BTreeSet<String>> {
        self.0.get(key).filter(|s| !s.is_empty())
    }

    /// The filters `GET /nodes` accepts.
    pub const NODE_KEYS: &'static [&'static str] =
        &["id", "label", "membership", "name", "node.label", "role"];

    /// Checks values up front so a bad one is a 400 even when no node exists.
    pub fn validate_nodes(&self) -> Result<(), ControlError> {
        if let Some(roles) = self.values("role") {
            if let Some(bad) = roles.iter().find(|r| *r != "manager" && *r != "worker") {
                return Err(ControlError::InvalidArgument(format!(
                    "Invalid role filter: '{bad}'"
                )));
            }
        }
        if let Some(ms) = self.values("membership") {
            if let Some(bad) = ms.iter().find(|m| *m != "accepted" && *m != "pending") {
                return Err(ControlError::InvalidArgument(format!(
                    "Invalid membership filter: '{bad}'"
                )));
            }
        }
        Ok(())
    }

    pub fn matches_node(&self, n: &NodeRecord) -> bool {
        let any = |key: &str, pred: &dyn Fn(&str) -> bool| match self.values(key) {
            None => true,
            Some(vals) => vals.iter().any(|v| pred(v)),
        };
        let labels = n.spec.labels.clone().unwrap_or_default();
        any("id", &|v| n.id.starts_with(v))
            && any("name", &|v| n.name().starts_with(v))
            && any("role", &|v| n.spec.role.as_str() == v)
            && any("membership", &|v| v == "accepted")
            && any("node.label", &|v| label_matches(&labels, v))
            // Engine labels: swarmguard records none for its nodes yet, so only an empty set
            // of label filters matches.
            && any("label", &|_| false)
    }
}

impl Filters {
    /// The values given for `key`, if any.
    pub fn values_of(&self, key: &str) -> Option<&BTreeSet<String>> {
        self.values(key)
    }

    /// `GET /services` filters: id and name prefixes, labels, mode.
    pub fn matches_service(&self, s: &ServiceRecord) -> bool {
        let any = |key: &str, pred: &dyn Fn(&str) -> bool| match self.values(key) {
            None => true,
            Some(vals) => vals.iter().any(|v| pred(v)),
        };
        let mode = if s.spec.replicas().is_some() {
            "replicated"
        } else {
            "global"
        };
        any("id", &|v| s.id.starts_with(v))
            && any("name", &|v| s.spec.name.starts_with(v))
            && any("mode", &|v| v == mode)
            && any("label", &|v| label_matches(&s.spec.labels, v))
    }

    /// `GET /tasks` filters other than `service` and `_up-to-date` (the handler resolves those).
    pub fn matches_task(&self, t: &TaskRecord) -> bool {
        let any = |key: &str, pred: &dyn Fn(&str) -> bool| match self.values(key) {
            None => true,
            Some(vals) => vals.iter().any(|v| pred(v)),
        };
        let name = format!("{}.{}", t.service_name, t.slot);
        any("id", &|v| t.id.starts_with(v))
            && any("name", &|v| name.starts_with(v))
            && any("node", &|v| t.node_id == v)
            && any("desired-state", &|v| {
                serde_json::to_value(t.desired_state).is_ok_and(|s| s == v)
            })
            && any("label", &|_| false)
    }

    /// The filters `GET /secrets` accepts (dockerd's `newListSecretsFilters`).
    pub const SECRET_KEYS: &'static [&'static str] = &["id", "label", "name", "names"];

    /// SwarmKit's `ListSecrets`: ID prefix, name prefix, exact name, label `k` or `k=v`.
    pub fn matches_secret(&self, s: &super::secrets::SecretRecord) -> bool {
        let any = |key: &str, pred: &dyn Fn(&str) -> bool| match self.values(key) {
            None => true,
            Some(vals) => vals.iter().any(|v| pred(v)),
        };
        let all_labels = match self.values("label") {
            None => true,
            Some(vals) => vals.iter().all(|v| label_matches(&s.labels, v)),
        };
        any("id", &|v| s.id.starts_with(v))
            && any("name", &|v| s.name.starts_with(v))
            && any("names", &|v| s.name == v)
            && all_labels
    }
}

fn label_matches(labels: &BTreeMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filter_shapes_parse() {
        let f = Filters::parse(Some(r#"{"role":{"manager":true}}"#), Filters::NODE_KEYS).unwrap();
        assert!(f.values("role").unwrap().contains("manager"));
        let f = Filters::parse(Some(r#"{"role":["worker"]}"#), Filters::NODE_KEYS).unwrap();
        assert!(f.values("role").unwrap().contains("worker"));
    }

    #[test]
    fn bad_filters_are_named() {
        let cases = [
            (r#"{"colour":{"red":true}}"#, "Invalid filter 'colour'"),
            ("{not json", "invalid filter:"),
            (r#"["role"]"#, "expected a JSON object"),
            (r#"{"role":[1]}"#, "values must be strings"),
            (r#"{"role":"manager"}"#, "expected an object or a list"),
        ];
        for (raw, want) in cases {
            let err = Filters::parse(Some(raw), Filters::NODE_KEYS).unwrap_err();
            assert!(err.to_string().contains(want), "{raw}: {err}");
            assert_eq!(err.http_status(), 400);
        }
        let f = Filters::parse(Some(r#"{"role":{"boss":true}}"#), Filters::NODE_KEYS).unwrap();
        assert_eq!(
            f.validate_nodes().unwrap_err().to_string(),
            "Invalid role filter: 'boss'"
        );
        let long = format!(r#"{{"id":["{}"]}}"#, "a".repeat(20_000));
        assert!(Filters::parse(Some(&long), Filters::NODE_KEYS).is_err());
    }
}
