//! The hint table of RingCentral's Extension Info Event, shared by [`crate::routing`] and the load
//! generator of `bench/`.

/// The built-in hint table of RingCentral's Extension Info Event, target APIs exactly as documented
/// (including the stray leading and trailing slashes).
pub const BUILT_IN_HINTS: &[(&str, &[&str])] = &[
    ("AccountSettings", &["account/~"]),
    ("AccountStatus", &["account/~"]),
    ("AnsweringRules", &["account/~/extension/~"]),
    ("CompanyNumbers", &["account/~/extension/~/phone-number"]),
    ("DialingPlan", &["account/~/dialing-plan"]),
    ("ExtensionInfo", &["account/~/extension/~/"]),
    ("Features", &["account/~/extension/~/features"]),
    ("Limits", &["account/~/extension/~/features"]),
    ("Permissions", &["account/~/extension/~/features"]),
    ("ProfileImage", &["/account/~/extension/~/profile-image"]),
    (
        "VideoConfiguration",
        &["account/~/extension", "account/~/extension/~/"],
    ),
    (
        "CallQueueMembersChange",
        &[
            "account/~/extension/~/call-queues",
            "account/~/call-queues/~/bulk-assign",
        ],
    ),
];
