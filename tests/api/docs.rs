//! The settings reference (`docs/configuration.md`) and `config.example.toml` are checked against the
//! settings the binary declares, so neither can drift from the code. `UPDATE_DOCS=1 cargo test --test
//! api docs` rewrites the reference's table from `serve --help`.

use std::path::Path;

const BEGIN: &str = "<!-- settings:begin (generated from `serve --help`) -->";
const END: &str = "<!-- settings:end -->";

/// One setting as `serve --help` declares it.
struct Declared {
    flag: String,
    variable: Option<String>,
    default: Option<String>,
    meaning: String,
}

fn declared() -> Vec<Declared> {
    let output = crate::common::process::bridge_command()
        .args(["serve", "--help"])
        .env("COLUMNS", "1000")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let mut settings: Vec<Declared> = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let mut flush = |block: &mut Vec<&str>| {
        let Some(head) = block.first() else { return };
        let flag = head.split_whitespace().next().unwrap().to_string();
        let text: Vec<&str> = block[1..].iter().map(|l| l.trim()).collect();
        let description = text
            .iter()
            .take_while(|l| !l.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let variable = text
            .iter()
            .find_map(|l| l.strip_prefix("[env: "))
            .map(|v| v.trim_end_matches(']').trim_end_matches('=').to_string());
        // clap prints a declared default on its own line; a default that depends on other settings
        // is written in the doc text.
        let declared_default = text
            .iter()
            .find_map(|l| l.strip_prefix("[default: "))
            .map(|v| v.trim_end_matches(']').to_string());
        let (meaning, default) = match description.split_once(" [default: ") {
            Some((meaning, rest)) => (
                meaning.to_string(),
                Some(rest.rsplit_once(']').map_or(rest, |(d, _)| d).to_string()),
            ),
            None => (description.clone(), declared_default),
        };
        if flag != "-h," && flag != "--help" {
            settings.push(Declared {
                flag,
                variable,
                default,
                meaning,
            });
        }
        block.clear();
    };
    for line in help
        .lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .skip(1)
    {
        if line.trim_start().starts_with('-')
            && line.starts_with("  ")
            && !line.starts_with("          ")
        {
            flush(&mut block);
        }
        if !block.is_empty() || line.trim_start().starts_with('-') {
            block.push(line);
        }
    }
    flush(&mut block);
    assert!(settings.len() > 20, "parsed {} settings", settings.len());
    settings
}

fn table(settings: &[Declared]) -> String {
    let mut out = String::from("| Flag | Variable | Default | Meaning |\n|---|---|---|---|\n");
    for s in settings {
        let cell = |v: &Option<String>| v.as_ref().map(|v| format!("`{v}`")).unwrap_or_default();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s.flag,
            cell(&s.variable),
            cell(&s.default),
            s.meaning.replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn the_configuration_reference_is_the_clis() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (before, rest) = doc.split_once(BEGIN).expect("the begin marker");
    let (current, after) = rest.split_once(END).expect("the end marker");
    let expected = format!("\n{}", table(&declared()));
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{before}{BEGIN}{expected}{END}{after}")).unwrap();
        return;
    }
    assert_eq!(
        current, expected,
        "docs/configuration.md is out of date: run `UPDATE_DOCS=1 cargo test --test api docs`"
    );
}

/// The TOML key of a flag: its name with `_`; the `--rc-*` settings live in `[ringcentral]`.
fn toml_key(flag: &str) -> Option<String> {
    let name = flag.trim_start_matches("--");
    let key = match name {
        "config" => return None,
        "kafka-property" => "[kafka.properties]".to_string(),
        "allowed-subscription-id" => "allowed_subscription_ids".to_string(),
        "rc-event-filter" => "event_filters".to_string(),
        "state" => "[state]".to_string(),
        // Under [state], as `reconcile_interval`.
        "state-reconcile-interval" => "reconcile_interval".to_string(),
        other => other.trim_start_matches("rc-").replace('-', "_"),
    };
    Some(key)
}

#[test]
fn every_setting_has_its_key_in_the_example_config() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
            .unwrap();
    let missing: Vec<String> = declared()
        .iter()
        .filter_map(|s| toml_key(&s.flag))
        .filter(|key| {
            !example
                .lines()
                .any(|l| l.trim_start_matches(['#', ' ']).starts_with(key.as_str()))
        })
        .collect();
    assert!(missing.is_empty(), "config.example.toml lacks {missing:?}");
}

/// `rc-kafka-bridge asyncapi` with `args`, its standard output.
fn asyncapi(args: &[&str]) -> String {
    let output = crate::common::process::bridge_command()
        .arg("asyncapi")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_asyncapi_document_is_the_commands_and_valid_asyncapi_3() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/asyncapi.yaml");
    let printed = asyncapi(&[]);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &printed).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap();
    assert!(
        checked_in == printed,
        "docs/asyncapi.yaml is out of date: run `UPDATE_DOCS=1 cargo test --test api docs`"
    );
    let document: serde_json::Value =
        serde_json::from_str(&asyncapi(&["--format", "json"])).unwrap();
    let spec =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vendor/asyncapi-3.0.0.schema.json");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spec).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&spec).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The YAML says what the JSON says.
    let yaml: serde_json::Value = yaml_serde::from_str(&printed).unwrap();
    assert_eq!(yaml, document);
}

#[test]
fn the_asyncapi_document_follows_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        "topic_prefix = \"acme.\"\n[hints]\nHolidays = [\"account/~/extension/~/holidays\"]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let document: serde_json::Value = serde_json::from_str(&asyncapi(&[
        "--format",
        "json",
        "--config",
        config,
        "--state",
        "--rc-client-id",
        "id",
        "--rc-client-secret",
        "secret",
        "--rc-jwt",
        "jwt",
    ]))
    .unwrap();
    let channels = document["channels"].as_object().unwrap();
    let channel = |address: &str| {
        channels
            .values()
            .find(|c| c["address"] == address)
            .unwrap_or_else(|| panic!("no channel {address}"))
    };
    let holidays = channel("acme.account.extension.holidays");
    assert!(
        holidays["description"]
            .as_str()
            .unwrap()
            .contains("Holidays")
    );
    assert!(holidays["messages"]["hint"].is_object());
    // State topics are compacted; hint topics are not.
    let features = channel("acme.state.account.extension.features");
    assert_eq!(
        features["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"],
        serde_json::json!(["compact"])
    );
    assert!(features["messages"]["stateTombstone"].is_object());
    assert!(holidays["bindings"]["kafka"]["topicConfiguration"].is_null());
    assert!(
        channels
            .values()
            .all(|c| c["address"].as_str().unwrap().starts_with("acme."))
    );
}
