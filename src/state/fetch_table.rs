//! The fetch table: for each hint, the GET that returns the current state of what it says changed,
//! its rate-limit group, whether it is paged, and the state topic it feeds. Pure, no I/O.
//!
//! The hint table's target APIs are not all GETs that return the change (Answering Rules have their
//! own GET, the call-queue targets are a PUT and a POST), so state has its own table, from RingCentral's
//! API reference. A GET is written as RingCentral documents it ([`GetTemplate`]):
//! `/restapi/v1.0/account/~/extension/{id}/phone-number`. One naming `{id}` is per extension (its state
//! is keyed by extension id), any other is account-level (keyed by account id). Its state topic is
//! `<prefix>state.` + the GET path derived like a hint topic ([`GetTemplate::topic_suffix`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::get_template::{GetTemplate, InvalidResourceId, KeyScope, TemplateError};
use super::rate_limits::RateGroup;
use crate::notification::Hint;
use crate::routing::{Topic, TopicError};

/// What a built-in hint fetches, or why it fetches nothing.
enum BuiltIn {
    Get {
        get: &'static str,
        group: RateGroup,
        paged: bool,
    },
    NoGet(&'static str),
}

const fn get(get: &'static str, group: RateGroup, paged: bool) -> BuiltIn {
    BuiltIn::Get { get, group, paged }
}

const EXTENSION: &str = "/restapi/v1.0/account/~/extension/{id}";
const FEATURES: &str = "/restapi/v1.0/account/~/extension/{id}/features";

/// The built-in fetch table, one entry for every hint of [`crate::routing::BUILT_IN_HINTS`].
const BUILT_IN_FETCHES: &[(&str, BuiltIn)] = &[
    (
        "AccountSettings",
        get("/restapi/v1.0/account/~", RateGroup::Light, false),
    ),
    (
        "AccountStatus",
        get("/restapi/v1.0/account/~", RateGroup::Light, false),
    ),
    (
        "AnsweringRules",
        get(
            "/restapi/v1.0/account/~/extension/{id}/answering-rule",
            RateGroup::Medium,
            true,
        ),
    ),
    (
        "CompanyNumbers",
        get(
            "/restapi/v1.0/account/~/extension/{id}/phone-number",
            RateGroup::Light,
            true,
        ),
    ),
    (
        "DialingPlan",
        BuiltIn::NoGet("no GET is documented for it (a legacy, internal API)"),
    ),
    ("ExtensionInfo", get(EXTENSION, RateGroup::Light, false)),
    ("Features", get(FEATURES, RateGroup::Medium, false)),
    ("Limits", get(FEATURES, RateGroup::Medium, false)),
    ("Permissions", get(FEATURES, RateGroup::Medium, false)),
    // The image's `etag` and `lastModified` are in the extension record; the image itself is binary.
    ("ProfileImage", get(EXTENSION, RateGroup::Light, false)),
    (
        "VideoConfiguration",
        get(
            "/restapi/v1.0/account/~/extension/{id}/video-configuration",
            RateGroup::Light,
            false,
        ),
    ),
    (
        "CallQueueMembersChange",
        get(
            "/restapi/v1.0/account/~/call-queues?memberExtensionId={id}",
            RateGroup::Medium,
            true,
        ),
    ),
];

/// A compacted topic holding the current state of one kind of resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateTopic {
    pub topic: Topic,
    pub scope: KeyScope,
}

impl StateTopic {
    /// Whether its records are keyed by extension: a deleted extension leaves a tombstone here.
    pub fn is_per_extension(&self) -> bool {
        self.scope == KeyScope::Extension
    }
}

/// How a hint's resource is fetched and where its state goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFetch {
    pub get: GetTemplate,
    pub group: RateGroup,
    /// Whether the answer comes in pages (`navigation.nextPage.uri`) to be merged into one state.
    pub paged: bool,
    pub topic: StateTopic,
}

/// What the fetch queue coalesces on: one state record, a topic and its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub topic: Topic,
    /// The extension id, or the account id for an account-level resource.
    pub key: String,
}

/// One resource to fetch: where to GET it and where its state goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub key: ResourceKey,
    pub scope: KeyScope,
    /// Path and query, e.g. `/restapi/v1.0/account/37439510/extension/8475874957/features`.
    pub path: String,
    pub group: RateGroup,
    pub paged: bool,
}

impl StateFetch {
    /// The resource of one extension's change (`extension_id` unused for an account-level GET).
    pub fn resource(
        &self,
        account_id: &str,
        extension_id: &str,
    ) -> Result<Resource, InvalidResourceId> {
        let key = match self.topic.scope {
            KeyScope::Extension => extension_id,
            KeyScope::Account => account_id,
        };
        Ok(Resource {
            key: ResourceKey {
                topic: self.topic.topic.clone(),
                key: key.to_string(),
            },
            scope: self.topic.scope,
            path: self.get.resource_path(account_id, extension_id)?,
            group: self.group,
            paged: self.paged,
        })
    }
}

/// Why a hint's state is not fetched: what `routes` prints in place of a state topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFetched {
    /// A built-in hint that no GET returns the state of.
    NoGet(&'static str),
    /// `[state.fetch.<hint>]` without a `get`.
    SwitchedOff,
    /// A hint the table does not know.
    UnknownHint,
}

impl NotFetched {
    /// A bounded label, for metrics.
    pub fn label(self) -> &'static str {
        match self {
            NotFetched::NoGet(_) => "no_get",
            NotFetched::SwitchedOff => "switched_off",
            NotFetched::UnknownHint => "unknown_hint",
        }
    }
}

impl fmt::Display for NotFetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotFetched::NoGet(why) => f.write_str(why),
            NotFetched::SwitchedOff => f.write_str("switched off in [state.fetch]"),
            NotFetched::UnknownHint => {
                f.write_str("no GET is known for it (add one in [state.fetch])")
            }
        }
    }
}

/// A `[state.fetch.<hint>]` entry: replaces a built-in hint's fetch or adds one. Without `get`, the
/// hint is not fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFetchOverride {
    pub get: Option<String>,
    pub group: Option<RateGroup>,
    pub paged: Option<bool>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchTableError {
    #[error("[state.fetch.{hint}] get `{get}`: {problem}")]
    Get {
        hint: String,
        get: String,
        problem: TemplateError,
    },
    #[error(
        "[state.fetch.{hint}]: `get` needs a `group` (light, medium or heavy, as the endpoint's API reference says)"
    )]
    MissingGroup { hint: String },
    #[error(
        "[state.fetch.{hint}]: `group` and `paged` need a `get` (without one the hint is not fetched)"
    )]
    WithoutGet { hint: String },
    #[error("hint `{hint}`: state topic: {source}")]
    Topic {
        hint: String,
        #[source]
        source: TopicError,
    },
    #[error(
        "hints `{first}` and `{second}` fetch the state topic `{topic}` differently: one topic holds one resource"
    )]
    SharedTopic {
        topic: Topic,
        first: String,
        second: String,
    },
}

/// The effective fetch table: the built-in one with the configuration's overrides and additions.
#[derive(Debug, Clone)]
pub struct FetchTable {
    hints: BTreeMap<Hint, Result<StateFetch, NotFetched>>,
}

type Entry = Result<(String, RateGroup, bool), NotFetched>;

impl FetchTable {
    /// The built-in table under `prefix` (e.g. `ringcentral.`).
    pub fn built_in(prefix: &str) -> Result<FetchTable, FetchTableError> {
        FetchTable::new(prefix, &BTreeMap::new())
    }

    /// Builds and validates the table; `overrides` replace a built-in hint's fetch or add a hint.
    pub fn new(
        prefix: &str,
        overrides: &BTreeMap<String, StateFetchOverride>,
    ) -> Result<FetchTable, FetchTableError> {
        let mut entries: BTreeMap<String, Entry> = BUILT_IN_FETCHES
            .iter()
            .map(|(hint, built_in)| {
                let entry = match built_in {
                    BuiltIn::Get { get, group, paged } => Ok(((*get).to_string(), *group, *paged)),
                    BuiltIn::NoGet(why) => Err(NotFetched::NoGet(why)),
                };
                ((*hint).to_string(), entry)
            })
            .collect();
        for (hint, o) in overrides {
            let entry = match (&o.get, o.group) {
                (Some(get), Some(group)) => Ok((get.clone(), group, o.paged.unwrap_or(false))),
                (Some(_), None) => {
                    return Err(FetchTableError::MissingGroup { hint: hint.clone() });
                }
                (None, None) if o.paged.is_none() => Err(NotFetched::SwitchedOff),
                (None, _) => return Err(FetchTableError::WithoutGet { hint: hint.clone() }),
            };
            entries.insert(hint.clone(), entry);
        }

        let mut hints = BTreeMap::new();
        let mut by_topic: BTreeMap<Topic, (String, StateFetch)> = BTreeMap::new();
        for (hint, entry) in entries {
            let fetch = match entry {
                Ok((get, group, paged)) => {
                    let fetch = state_fetch(prefix, &hint, &get, group, paged)?;
                    let topic = fetch.topic.topic.clone();
                    match by_topic.get(&topic) {
                        Some((first, other)) if *other != fetch => {
                            return Err(FetchTableError::SharedTopic {
                                topic,
                                first: first.clone(),
                                second: hint,
                            });
                        }
                        Some(_) => {}
                        None => {
                            by_topic.insert(topic, (hint.clone(), fetch.clone()));
                        }
                    }
                    Ok(fetch)
                }
                Err(not_fetched) => Err(not_fetched),
            };
            hints.insert(Hint::new(hint), fetch);
        }
        Ok(FetchTable { hints })
    }

    /// How `hint`'s resource is fetched, or why it is not.
    pub fn fetch_for(&self, hint: &Hint) -> Result<&StateFetch, NotFetched> {
        match self.hints.get(hint) {
            Some(entry) => entry.as_ref().map_err(|not_fetched| *not_fetched),
            None => Err(NotFetched::UnknownHint),
        }
    }

    /// Every hint the table names, in name order, with its fetch or why it has none: what `routes`
    /// prints.
    pub fn hints(&self) -> impl Iterator<Item = (&Hint, Result<&StateFetch, NotFetched>)> {
        self.hints
            .iter()
            .map(|(hint, entry)| (hint, entry.as_ref().map_err(|not_fetched| *not_fetched)))
    }

    /// The fetch whose state goes to `topic`: how a queued [`ResourceKey`] is fetched again.
    pub fn by_topic(&self, topic: &Topic) -> Option<&StateFetch> {
        self.fetches().find(|fetch| fetch.topic.topic == *topic)
    }

    /// Every state topic, sorted, without repeats: what `topics ensure` creates compacted.
    pub fn state_topics(&self) -> Vec<StateTopic> {
        let mut topics: Vec<StateTopic> = self.fetches().map(|f| f.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// The state topic of the extension record itself (ExtensionInfo's, while it GETs the record):
    /// its states also move the sweeps' index, so a change a hint delivered is not reported again as
    /// missed.
    pub fn extension_record_topic(&self) -> Option<Topic> {
        let fetch = self.fetch_for(&Hint::new("ExtensionInfo")).ok()?;
        (fetch.get.as_str() == EXTENSION).then(|| fetch.topic.topic.clone())
    }

    /// The state topics keyed by extension: where a deleted extension leaves tombstones.
    pub fn per_extension_topics(&self) -> Vec<Topic> {
        self.state_topics()
            .into_iter()
            .filter(StateTopic::is_per_extension)
            .map(|state| state.topic)
            .collect()
    }

    fn fetches(&self) -> impl Iterator<Item = &StateFetch> {
        self.hints.values().filter_map(|entry| entry.as_ref().ok())
    }
}

fn state_fetch(
    prefix: &str,
    hint: &str,
    get: &str,
    group: RateGroup,
    paged: bool,
) -> Result<StateFetch, FetchTableError> {
    let template = GetTemplate::parse(get).map_err(|problem| FetchTableError::Get {
        hint: hint.to_string(),
        get: get.to_string(),
        problem,
    })?;
    let topic =
        Topic::parse(format!("{prefix}state.{}", template.topic_suffix())).map_err(|source| {
            FetchTableError::Topic {
                hint: hint.to_string(),
                source,
            }
        })?;
    Ok(StateFetch {
        topic: StateTopic {
            topic,
            scope: template.scope(),
        },
        get: template,
        group,
        paged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::BUILT_IN_HINTS;

    const LIGHT: RateGroup = RateGroup::Light;
    const MEDIUM: RateGroup = RateGroup::Medium;

    /// The table at the top of the REST spec: hint, GET, group, paged, state topic.
    const SPEC: &[(&str, &str, RateGroup, bool, &str)] = &[
        (
            "AccountSettings",
            "/restapi/v1.0/account/~",
            LIGHT,
            false,
            "ringcentral.state.account",
        ),
        (
            "AccountStatus",
            "/restapi/v1.0/account/~",
            LIGHT,
            false,
            "ringcentral.state.account",
        ),
        (
            "ExtensionInfo",
            "/restapi/v1.0/account/~/extension/{id}",
            LIGHT,
            false,
            "ringcentral.state.account.extension",
        ),
        (
            "ProfileImage",
            "/restapi/v1.0/account/~/extension/{id}",
            LIGHT,
            false,
            "ringcentral.state.account.extension",
        ),
        (
            "CompanyNumbers",
            "/restapi/v1.0/account/~/extension/{id}/phone-number",
            LIGHT,
            true,
            "ringcentral.state.account.extension.phone-number",
        ),
        (
            "Features",
            "/restapi/v1.0/account/~/extension/{id}/features",
            MEDIUM,
            false,
            "ringcentral.state.account.extension.features",
        ),
        (
            "Limits",
            "/restapi/v1.0/account/~/extension/{id}/features",
            MEDIUM,
            false,
            "ringcentral.state.account.extension.features",
        ),
        (
            "Permissions",
            "/restapi/v1.0/account/~/extension/{id}/features",
            MEDIUM,
            false,
            "ringcentral.state.account.extension.features",
        ),
        (
            "AnsweringRules",
            "/restapi/v1.0/account/~/extension/{id}/answering-rule",
            MEDIUM,
            true,
            "ringcentral.state.account.extension.answering-rule",
        ),
        (
            "VideoConfiguration",
            "/restapi/v1.0/account/~/extension/{id}/video-configuration",
            LIGHT,
            false,
            "ringcentral.state.account.extension.video-configuration",
        ),
        (
            "CallQueueMembersChange",
            "/restapi/v1.0/account/~/call-queues?memberExtensionId={id}",
            MEDIUM,
            true,
            "ringcentral.state.account.extension.call-queues",
        ),
    ];

    fn table() -> FetchTable {
        FetchTable::built_in("ringcentral.").unwrap()
    }

    fn overrides(entries: &[(&str, StateFetchOverride)]) -> BTreeMap<String, StateFetchOverride> {
        entries
            .iter()
            .map(|(hint, o)| ((*hint).to_string(), o.clone()))
            .collect()
    }

    fn fetching(get: &str, group: RateGroup, paged: bool) -> StateFetchOverride {
        StateFetchOverride {
            get: Some(get.into()),
            group: Some(group),
            paged: Some(paged),
        }
    }

    #[test]
    fn every_built_in_hint_fetches_the_get_of_the_spec_or_nothing() {
        let table = table();
        for (hint, _) in BUILT_IN_HINTS {
            let fetch = table.fetch_for(&Hint::new(*hint));
            match SPEC.iter().find(|(name, ..)| name == hint) {
                Some((_, get, group, paged, topic)) => {
                    let fetch = fetch.unwrap_or_else(|why| panic!("{hint} is not fetched: {why}"));
                    assert_eq!(fetch.get.as_str(), *get, "{hint}");
                    assert_eq!(fetch.group, *group, "{hint}");
                    assert_eq!(fetch.paged, *paged, "{hint}");
                    assert_eq!(fetch.topic.topic.as_str(), *topic, "{hint}");
                    let scope = if *hint == "AccountSettings" || *hint == "AccountStatus" {
                        KeyScope::Account
                    } else {
                        KeyScope::Extension
                    };
                    assert_eq!(fetch.topic.scope, scope, "{hint}");
                }
                None => {
                    assert_eq!(
                        *hint, "DialingPlan",
                        "only DialingPlan has no GET in the spec"
                    );
                    let why = fetch.unwrap_err();
                    assert_eq!(why.label(), "no_get");
                    assert!(why.to_string().contains("legacy"), "{why}");
                }
            }
        }
        assert_eq!(
            table.hints().count(),
            BUILT_IN_HINTS.len(),
            "the table names exactly the built-in hints"
        );
    }

    #[test]
    fn resources_fill_in_the_ids_and_key_by_scope() {
        let table = table();
        let resource = |hint: &str| {
            table
                .fetch_for(&Hint::new(hint))
                .unwrap()
                .resource("37439510", "8475874957")
                .unwrap()
        };
        let cases = [
            (
                "AccountStatus",
                "/restapi/v1.0/account/37439510",
                "37439510",
                KeyScope::Account,
            ),
            (
                "ExtensionInfo",
                "/restapi/v1.0/account/37439510/extension/8475874957",
                "8475874957",
                KeyScope::Extension,
            ),
            (
                "CompanyNumbers",
                "/restapi/v1.0/account/37439510/extension/8475874957/phone-number",
                "8475874957",
                KeyScope::Extension,
            ),
            (
                "CallQueueMembersChange",
                "/restapi/v1.0/account/37439510/call-queues?memberExtensionId=8475874957",
                "8475874957",
                KeyScope::Extension,
            ),
        ];
        for (hint, path, key, scope) in cases {
            let resource = resource(hint);
            assert_eq!(resource.path, path, "{hint}");
            assert_eq!(resource.key.key, key, "{hint}");
            assert_eq!(resource.scope, scope, "{hint}");
        }
        let features = resource("Features");
        assert_eq!(features.group, RateGroup::Medium);
        assert!(!features.paged);
        assert_eq!(
            features.key.topic.as_str(),
            "ringcentral.state.account.extension.features"
        );
        assert_eq!(
            resource("Limits").key,
            features.key,
            "hints of one resource queue one fetch"
        );
        let tilde = table.fetch_for(&Hint::new("AccountSettings")).unwrap();
        assert_eq!(
            tilde.resource("~", "1").unwrap().path,
            "/restapi/v1.0/account/~"
        );
    }

    #[test]
    fn the_extension_record_topic_is_extension_infos_while_it_gets_the_record() {
        assert_eq!(
            table().extension_record_topic().unwrap().as_str(),
            "ringcentral.state.account.extension"
        );
        let elsewhere = overrides(&[(
            "ExtensionInfo",
            fetching(
                "/restapi/v1.0/account/~/extension/{id}/grant",
                RateGroup::Light,
                true,
            ),
        )]);
        let table = FetchTable::new("ringcentral.", &elsewhere).unwrap();
        assert_eq!(table.extension_record_topic(), None);
    }

    #[test]
    fn state_topics_are_listed_once_and_per_extension_ones_apart() {
        let table = table();
        let names: Vec<String> = table
            .state_topics()
            .iter()
            .map(|t| t.topic.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "ringcentral.state.account",
                "ringcentral.state.account.extension",
                "ringcentral.state.account.extension.answering-rule",
                "ringcentral.state.account.extension.call-queues",
                "ringcentral.state.account.extension.features",
                "ringcentral.state.account.extension.phone-number",
                "ringcentral.state.account.extension.video-configuration",
            ]
        );
        let per_extension: Vec<String> = table
            .per_extension_topics()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(per_extension, names[1..]);
        let features = Topic::parse("ringcentral.state.account.extension.features").unwrap();
        assert_eq!(
            table.by_topic(&features).unwrap().get.as_str(),
            "/restapi/v1.0/account/~/extension/{id}/features"
        );
        assert!(
            table
                .by_topic(&Topic::parse("ringcentral.account").unwrap())
                .is_none()
        );
    }

    #[test]
    fn the_prefix_comes_before_state() {
        let table = FetchTable::built_in("acme-").unwrap();
        let fetch = table.fetch_for(&Hint::new("CompanyNumbers")).unwrap();
        assert_eq!(
            fetch.topic.topic.as_str(),
            "acme-state.account.extension.phone-number"
        );
        let bare = FetchTable::built_in("").unwrap();
        assert_eq!(
            bare.fetch_for(&Hint::new("AccountStatus"))
                .unwrap()
                .topic
                .topic
                .as_str(),
            "state.account"
        );
        let err = FetchTable::built_in("bad prefix!").unwrap_err();
        assert!(matches!(err, FetchTableError::Topic { .. }), "{err}");
    }

    #[test]
    fn unknown_and_switched_off_hints_say_why_they_are_not_fetched() {
        let table = FetchTable::new(
            "ringcentral.",
            &overrides(&[("ProfileImage", StateFetchOverride::default())]),
        )
        .unwrap();
        let unknown = table.fetch_for(&Hint::new("BrandNewHint")).unwrap_err();
        assert_eq!(unknown, NotFetched::UnknownHint);
        assert!(unknown.to_string().contains("[state.fetch]"), "{unknown}");
        let off = table.fetch_for(&Hint::new("ProfileImage")).unwrap_err();
        assert_eq!(off, NotFetched::SwitchedOff);
        assert_eq!(off.to_string(), "switched off in [state.fetch]");
        assert!(
            table.fetch_for(&Hint::new("ExtensionInfo")).is_ok(),
            "the other hint of the topic still fetches it"
        );
    }

    #[test]
    fn overrides_replace_built_in_fetches_and_add_hints() {
        let table = FetchTable::new(
            "ringcentral.",
            &overrides(&[
                (
                    "DialingPlan",
                    fetching("/restapi/v1.0/account/~/dialing-plan", RateGroup::Heavy, true),
                ),
                (
                    "PresenceHint",
                    fetching(
                        "/restapi/v1.0/account/~/extension/{id}/presence?detailedTelephonyState=true",
                        LIGHT,
                        false,
                    ),
                ),
            ]),
        )
        .unwrap();
        let dialing = table.fetch_for(&Hint::new("DialingPlan")).unwrap();
        assert_eq!(dialing.group, RateGroup::Heavy);
        assert!(dialing.paged);
        assert_eq!(
            dialing.topic.topic.as_str(),
            "ringcentral.state.account.dialing-plan"
        );
        assert_eq!(dialing.topic.scope, KeyScope::Account);
        let presence = table.fetch_for(&Hint::new("PresenceHint")).unwrap();
        assert_eq!(
            presence.topic.topic.as_str(),
            "ringcentral.state.account.extension.presence"
        );
        assert_eq!(
            presence.resource("1", "2").unwrap().path,
            "/restapi/v1.0/account/1/extension/2/presence?detailedTelephonyState=true"
        );
        assert_eq!(table.hints().count(), BUILT_IN_HINTS.len() + 1);
    }

    #[test]
    fn a_get_outside_the_rules_is_refused_with_its_reason() {
        let cases = [
            ("/restapi/v1.0/subscription", TemplateError::NotUnderAccount),
            ("restapi/v1.0/account/~", TemplateError::NotUnderAccount),
            ("/restapi/v2/account/~", TemplateError::NotUnderAccount),
            (
                "https://evil.example/restapi/v1.0/account/~",
                TemplateError::NotUnderAccount,
            ),
            (
                "/restapi/v1.0/account/~/extension/{id}/",
                TemplateError::EmptySegment,
            ),
            (
                "/restapi/v1.0/account/~//extension",
                TemplateError::EmptySegment,
            ),
            (
                "/restapi/v1.0/account/~/extension/../oauth",
                TemplateError::DotSegment,
            ),
            (
                "/restapi/v1.0/account/~/extension/~/features",
                TemplateError::ExtensionTilde,
            ),
            (
                "/restapi/v1.0/account/~/extension/{extensionId}",
                TemplateError::Character("{extensionId}".into()),
            ),
            (
                "/restapi/v1.0/account/~/extension/x{id}",
                TemplateError::Character("x{id}".into()),
            ),
            (
                "/restapi/v1.0/account/~/extension#x",
                TemplateError::Character("extension#x".into()),
            ),
            (
                "/restapi/v1.0/account/~/call-queues?memberExtensionId",
                TemplateError::Query("memberExtensionId".into()),
            ),
            (
                "/restapi/v1.0/account/~/call-queues?a=1&&b=2",
                TemplateError::Query(String::new()),
            ),
        ];
        for (get, problem) in cases {
            let err = FetchTable::new(
                "ringcentral.",
                &overrides(&[("Features", fetching(get, MEDIUM, false))]),
            )
            .unwrap_err();
            assert_eq!(
                err,
                FetchTableError::Get {
                    hint: "Features".into(),
                    get: get.into(),
                    problem,
                },
                "{get}"
            );
            assert!(
                err.to_string().starts_with("[state.fetch.Features] get "),
                "{err}"
            );
        }
    }

    #[test]
    fn an_override_needs_a_group_with_its_get_and_a_get_for_its_group() {
        let no_group = StateFetchOverride {
            get: Some("/restapi/v1.0/account/~/extension/{id}/features".into()),
            ..StateFetchOverride::default()
        };
        let err =
            FetchTable::new("ringcentral.", &overrides(&[("Features", no_group)])).unwrap_err();
        assert_eq!(
            err,
            FetchTableError::MissingGroup {
                hint: "Features".into()
            }
        );
        assert!(err.to_string().contains("light, medium or heavy"), "{err}");
        for without_get in [
            StateFetchOverride {
                group: Some(LIGHT),
                ..StateFetchOverride::default()
            },
            StateFetchOverride {
                paged: Some(false),
                ..StateFetchOverride::default()
            },
        ] {
            let err = FetchTable::new("ringcentral.", &overrides(&[("Features", without_get)]))
                .unwrap_err();
            assert_eq!(
                err,
                FetchTableError::WithoutGet {
                    hint: "Features".into()
                }
            );
        }
    }

    #[test]
    fn two_hints_cannot_fetch_one_state_topic_differently() {
        for (hint, o) in [
            (
                "Limits",
                fetching(
                    "/restapi/v1.0/account/~/extension/{id}/features",
                    LIGHT,
                    false,
                ),
            ),
            (
                "Limits",
                fetching(
                    "/restapi/v1.0/account/~/extension/{id}/features",
                    MEDIUM,
                    true,
                ),
            ),
            (
                "Limits",
                fetching(
                    "/restapi/v1.0/account/~/extension/{id}/features?x=1",
                    MEDIUM,
                    false,
                ),
            ),
            // An account-level list and the per-extension record derive the same name.
            (
                "AllExtensions",
                fetching("/restapi/v1.0/account/~/extension", MEDIUM, true),
            ),
        ] {
            let err = FetchTable::new("ringcentral.", &overrides(&[(hint, o)])).unwrap_err();
            assert!(
                matches!(err, FetchTableError::SharedTopic { .. }),
                "{hint}: {err}"
            );
            assert!(
                err.to_string().contains("one topic holds one resource"),
                "{err}"
            );
        }
    }

    #[test]
    fn overrides_read_from_toml() {
        #[derive(Deserialize)]
        struct State {
            fetch: BTreeMap<String, StateFetchOverride>,
        }
        let state: State = toml::from_str(
            r#"
            [fetch.DialingPlan]
            get = "/restapi/v1.0/account/~/dialing-plan"
            group = "Heavy"
            paged = true
            [fetch.ProfileImage]
            "#,
        )
        .unwrap();
        let table = FetchTable::new("ringcentral.", &state.fetch).unwrap();
        assert_eq!(
            table.fetch_for(&Hint::new("DialingPlan")).unwrap().group,
            RateGroup::Heavy
        );
        assert_eq!(
            table.fetch_for(&Hint::new("ProfileImage")).unwrap_err(),
            NotFetched::SwitchedOff
        );
        let unknown_group = toml::from_str::<State>("[fetch.X]\nget = \"/a\"\ngroup = \"fast\"");
        let err = unknown_group.err().unwrap().to_string();
        assert!(err.contains("unknown rate-limit group `fast`"), "{err}");
        let unknown_key = toml::from_str::<State>("[fetch.X]\nurl = \"/a\"");
        assert!(unknown_key.err().unwrap().to_string().contains("url"));
    }
}
