//! A state GET as RingCentral documents it, e.g. `/restapi/v1.0/account/~/extension/{id}/features`:
//! `~` is the account, `{id}` the extension. From it come the resource's key scope, its state topic
//! and the concrete path of one resource. Pure, no I/O.

/// The root every state GET lives under.
const ACCOUNT_ROOT: [&str; 4] = ["restapi", "v1.0", "account", "~"];
/// The placeholder of the extension id.
const EXTENSION_ID: &str = "{id}";

/// Whose state a resource is: what its records are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyScope {
    /// Keyed by extension id; a deleted extension leaves a tombstone.
    Extension,
    /// Keyed by account id.
    Account,
}

/// One part of a GET: text, the account id or the extension id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Account,
    Extension,
}

/// Why a GET cannot be a state GET.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("must begin with `/restapi/v1.0/account/~`")]
    NotUnderAccount,
    #[error("has an empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("has a `.` or `..` segment")]
    DotSegment,
    #[error(
        "`~` stands for the account only (right after `account/`); write `{{id}}` for the extension"
    )]
    ExtensionTilde,
    #[error(
        "`{0}` has characters outside [A-Za-z0-9-._~] (the one placeholder is `{{id}}`, the extension id)"
    )]
    Character(String),
    #[error("query part `{0}` is not `name=value`")]
    Query(String),
}

/// A state GET as RingCentral documents it, e.g. `/restapi/v1.0/account/~/extension/{id}/features`.
/// Only [`GetTemplate::parse`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetTemplate {
    text: String,
    path: Vec<Part>,
    query: Vec<(String, Part)>,
}

fn is_plain(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn part(text: &str) -> Result<Part, TemplateError> {
    match text {
        EXTENSION_ID => Ok(Part::Extension),
        _ if is_plain(text) => Ok(Part::Text(text.to_string())),
        _ => Err(TemplateError::Character(text.to_string())),
    }
}

impl GetTemplate {
    pub fn parse(text: &str) -> Result<GetTemplate, TemplateError> {
        let (path, query) = match text.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (text, None),
        };
        let segments: Vec<&str> = path
            .strip_prefix('/')
            .ok_or(TemplateError::NotUnderAccount)?
            .split('/')
            .collect();
        if !segments.starts_with(&ACCOUNT_ROOT) {
            return Err(TemplateError::NotUnderAccount);
        }
        let mut parts = Vec::with_capacity(segments.len());
        for (i, segment) in segments.iter().enumerate() {
            parts.push(match *segment {
                "" => return Err(TemplateError::EmptySegment),
                "." | ".." => return Err(TemplateError::DotSegment),
                "~" if i > 0 && segments[i - 1] == "account" => Part::Account,
                "~" => return Err(TemplateError::ExtensionTilde),
                other => part(other)?,
            });
        }
        let mut pairs = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (name, value) = pair
                .split_once('=')
                .filter(|(name, _)| is_plain(name))
                .ok_or_else(|| TemplateError::Query(pair.to_string()))?;
            pairs.push((name.to_string(), part(value)?));
        }
        Ok(GetTemplate {
            text: text.to_string(),
            path: parts,
            query: pairs,
        })
    }

    /// As written in the table or the configuration.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn names_extension(&self) -> bool {
        self.path.contains(&Part::Extension)
            || self.query.iter().any(|(_, v)| *v == Part::Extension)
    }

    pub fn scope(&self) -> KeyScope {
        if self.names_extension() {
            KeyScope::Extension
        } else {
            KeyScope::Account
        }
    }

    /// The topic name without `<prefix>state.`, derived like a hint topic: the path without the
    /// root's `restapi/v1.0`, `~` and `{id}`, `.`-joined, the query left out; e.g.
    /// `account.extension.phone-number`. A per-extension resource whose path does not go through
    /// `extension` (`account/~/call-queues?memberExtensionId={id}`, the call queues an extension is a
    /// member of) gets `extension` after `account`: every per-extension state topic begins with
    /// `account.extension`, so a topic's name says what its keys are.
    pub fn topic_suffix(&self) -> String {
        // The root's `restapi` and `v1.0` are the same for every GET and say nothing.
        let mut names: Vec<&str> = self.path[2..]
            .iter()
            .filter_map(|part| match part {
                Part::Text(text) => Some(text.as_str()),
                Part::Account | Part::Extension => None,
            })
            .collect();
        if self.scope() == KeyScope::Extension && names.get(1) != Some(&"extension") {
            names.insert(1, "extension");
        }
        names.join(".")
    }

    /// The concrete path and query of the GET: `~` replaced by the account id, `{id}` by the extension
    /// id, both percent-encoded.
    pub fn resource_path(
        &self,
        account_id: &str,
        extension_id: &str,
    ) -> Result<String, InvalidResourceId> {
        let account = encode_id(account_id)?;
        let extension = encode_id(extension_id)?;
        let value = |part: &Part| -> String {
            match part {
                Part::Text(text) => text.clone(),
                Part::Account => account.clone(),
                Part::Extension => extension.clone(),
            }
        };
        let mut path: String = self.path.iter().map(|p| format!("/{}", value(p))).collect();
        for (i, (name, part)) in self.query.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(name);
            path.push('=');
            path.push_str(&value(part));
        }
        Ok(path)
    }
}

/// An id that cannot be placed in a request path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` cannot be an id in a request path")]
pub struct InvalidResourceId(pub String);

/// Percent-encodes everything but RFC 3986's unreserved characters. Ids are digits or `~` once
/// parsed, but each becomes part of a request sent with the bridge's bearer token: nothing in one may
/// reach another endpoint. An id of dots only is refused, as URL parsers resolve even `%2E%2E`.
fn encode_id(id: &str) -> Result<String, InvalidResourceId> {
    if id.bytes().all(|b| b == b'.') {
        return Err(InvalidResourceId(id.to_string()));
    }
    let mut encoded = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_topic_is_the_path_and_per_extension_topics_lie_under_account_extension() {
        let cases = [
            ("/restapi/v1.0/account/~", "account", KeyScope::Account),
            (
                "/restapi/v1.0/account/~/extension/{id}/phone-number",
                "account.extension.phone-number",
                KeyScope::Extension,
            ),
            (
                "/restapi/v1.0/account/~/call-queues?memberExtensionId={id}",
                "account.extension.call-queues",
                KeyScope::Extension,
            ),
            (
                "/restapi/v1.0/account/~/presence/{id}",
                "account.extension.presence",
                KeyScope::Extension,
            ),
            (
                "/restapi/v1.0/account/~/extension?status=Enabled",
                "account.extension",
                KeyScope::Account,
            ),
        ];
        for (get, topic, scope) in cases {
            let get = GetTemplate::parse(get).unwrap();
            assert_eq!(get.topic_suffix(), topic, "{}", get.as_str());
            assert_eq!(get.scope(), scope, "{}", get.as_str());
        }
    }

    #[test]
    fn ids_are_percent_encoded_and_ids_of_dots_refused() {
        let get = GetTemplate::parse("/restapi/v1.0/account/~/call-queues?memberExtensionId={id}")
            .unwrap();
        assert_eq!(
            get.resource_path("1/../x", "2&a=b#c").unwrap(),
            "/restapi/v1.0/account/1%2F..%2Fx/call-queues?memberExtensionId=2%26a%3Db%23c"
        );
        for dots in ["", ".", ".."] {
            assert_eq!(
                get.resource_path("1", dots),
                Err(InvalidResourceId(dots.to_string())),
                "{dots:?}"
            );
            assert!(get.resource_path(dots, "1").is_err(), "{dots:?}");
        }
    }

    proptest! {
        #[test]
        fn no_id_adds_a_segment_or_a_query_part(account in ".{0,12}", extension in ".{0,12}") {
            let get = GetTemplate::parse("/restapi/v1.0/account/~/extension/{id}/x?a={id}&b=c").unwrap();
            if let Ok(path) = get.resource_path(&account, &extension) {
                let (path, query) = path.split_once('?').unwrap();
                prop_assert_eq!(path.split('/').count(), 8);
                prop_assert_eq!(query.split('&').count(), 2);
                prop_assert!(!path.contains('#') && !query.contains('#'));
                prop_assert!(path.split('/').all(|s| s != "." && s != ".."));
            }
        }
    }
}
