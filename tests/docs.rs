//! The documentation and the code must agree: the README's config table, `.env.example`, and
//! the close-code table in docs/PROTOCOL.md.

use std::collections::BTreeMap;

use palisade::Settings;
use palisade::{CloseCode, ErrorCode};
use serde_json::Value;

const README: &str = include_str!("../README.md");
const PROTOCOL: &str = include_str!("../docs/PROTOCOL.md");
const ENV_EXAMPLE: &str = include_str!("../.env.example");

/// The cells of the markdown table rows after `heading` whose first cell starts with `prefix`.
fn table_rows<'a>(doc: &'a str, heading: &str, prefix: &str) -> Vec<Vec<&'a str>> {
    let section = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .filter(|line| {
            line.trim_start_matches('|')
                .trim_start()
                .starts_with(prefix)
        })
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().trim_matches('`'))
                .collect()
        })
        .collect()
}

/// Every setting with its default, as the code sees it (required ones given placeholders).
fn defaults() -> BTreeMap<String, Value> {
    let settings =
        Settings::from_pairs([("ALLOWED_ORIGINS", "x"), ("JWT_DECODE_SECRET", "y")]).unwrap();
    let Value::Object(map) = serde_json::to_value(settings.env()).unwrap() else {
        unreachable!()
    };
    map.into_iter()
        .map(|(key, value)| (key.to_uppercase(), value))
        .collect()
}

#[test]
fn readme_config_table_lists_every_setting_with_its_default() {
    let rows = table_rows(README, "## Configuration", "`");
    let documented: BTreeMap<&str, &str> = rows.iter().map(|row| (row[0], row[1])).collect();
    let defaults = defaults();
    assert_eq!(
        documented.keys().copied().collect::<Vec<_>>(),
        defaults.keys().map(String::as_str).collect::<Vec<_>>(),
        "README config table and Config fields differ"
    );
    for (name, value) in &defaults {
        let cell = documented[name.as_str()];
        if cell.starts_with("required") {
            continue;
        }
        let expected = match value {
            Value::Null => "—".to_owned(),
            Value::String(text) if text.is_empty() => "—".to_owned(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        assert_eq!(cell, expected, "README default for {name}");
    }
}

#[test]
fn env_example_lists_every_setting_and_is_valid() {
    let pairs: Vec<(String, String)> = ENV_EXAMPLE
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("KEY=value");
            (key.to_owned(), value.to_owned())
        })
        .collect();
    let keys: Vec<&str> = pairs.iter().map(|(key, _)| key.as_str()).collect();
    for name in defaults().keys() {
        assert!(keys.contains(&name.as_str()), ".env.example lacks {name}");
    }
    let settings = Settings::from_pairs(pairs.clone()).expect(".env.example is a valid config");
    // Its values are the defaults (bar the three GarinChat settings it fills in).
    let example = serde_json::to_value(settings.env()).unwrap();
    for (name, default) in defaults() {
        if !["ALLOWED_ORIGINS", "JWT_DECODE_SECRET"].contains(&name.as_str()) {
            assert_eq!(example[name.to_lowercase()], default, "{name}");
        }
    }
}

#[test]
fn protocol_close_code_table_matches_the_code() {
    let rows = table_rows(PROTOCOL, "## Close codes", "1");
    let rows: Vec<_> = rows
        .into_iter()
        .chain(table_rows(PROTOCOL, "## Close codes", "4"))
        .map(|row| (row[0].parse::<u16>().unwrap(), row[1].to_owned()))
        .collect();
    let code: Vec<_> = CloseCode::ALL
        .iter()
        .map(|c| (c.code(), c.reason().to_owned()))
        .collect();
    assert_eq!(rows, code);
}

#[test]
fn protocol_error_code_table_matches_the_code() {
    let rows: Vec<(String, String)> = table_rows(PROTOCOL, "## Error codes", "`")
        .into_iter()
        .map(|row| (row[0].to_owned(), row[2].to_owned()))
        .collect();
    let code: Vec<(String, String)> = ErrorCode::ALL
        .iter()
        .map(|code| {
            let close = code
                .garinchat_close()
                .map_or("—".to_owned(), |close| close.code().to_string());
            (code.as_str().to_owned(), close)
        })
        .collect();
    assert_eq!(rows, code);
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../docs/grafana-dashboard.json")).expect("valid JSON");
    let exposition = palisade::testing::fresh_metrics();
    let families: Vec<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let known = |name: &str| {
        families.iter().any(|family| {
            ["", "_total", "_bucket", "_count", "_sum"]
                .iter()
                .any(|suffix| format!("{family}{suffix}") == name)
        })
    };
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("palisade_") {
                    assert!(known(word), "{word} in {expr:?} is not a metric");
                    queried += 1;
                }
            }
        }
    }
    assert!(queried >= 15, "{queried}");
    // Every family is on the dashboard.
    for family in &families {
        assert!(
            include_str!("../docs/grafana-dashboard.json").contains(family),
            "{family} is not on the dashboard"
        );
    }
}

#[test]
fn operations_doc_lists_every_metric() {
    let doc = include_str!("../docs/OPERATIONS.md");
    let exposition = palisade::testing::fresh_metrics();
    for family in exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
    {
        assert!(
            doc.contains(family),
            "{family} missing from docs/OPERATIONS.md"
        );
    }
}

#[test]
fn the_js_client_knows_every_close_code() {
    let module = include_str!("../clients/js/palisade.js");
    for code in CloseCode::ALL {
        let line = format!("{}: {{ meaning: \"{}\"", code.code(), code.reason());
        assert!(
            module.contains(&line),
            "clients/js/palisade.js lacks {line}"
        );
    }
    // Besides the server's, the SDK knows the codes a WebSocket reports by itself (1000 its own
    // close, 1005 none given, 1006 a drop, 1011-1013 a proxy's) and its own 4000 (no answer).
    let client_side = [1000, 1005, 1006, 1011, 1012, 1013, 4000];
    let listed: Vec<u16> = module
        .lines()
        .filter_map(|line| line.trim_start().split_once(": { meaning: "))
        .filter_map(|(code, _)| code.parse().ok())
        .collect();
    for code in &listed {
        assert!(
            CloseCode::ALL.iter().any(|known| known.code() == *code) || client_side.contains(code),
            "the JS client lists {code}, which the server never sends"
        );
    }
    assert_eq!(listed.len(), CloseCode::ALL.len() + client_side.len());
}

#[test]
fn readme_opens_with_the_run_and_test_commands() {
    let first_block = README
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert!(first_block.contains("cargo run --release -- demo"));
    assert!(first_block.contains("bash .ci/test"));
    let ci = include_str!("../.ci/run");
    assert!(
        ci.contains("bash .ci/test"),
        ".ci/run runs the README's test command"
    );
}

#[test]
fn the_room_extension_examples_are_frames_the_code_reads_or_writes() {
    use palisade::testing::ClientFrame;
    let section = PROTOCOL
        .split("## Rooms that remember")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Rooms that remember section");
    let examples: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("    "))
        .filter(|line| line.starts_with('{'))
        .collect();
    assert!(examples.len() >= 8, "{examples:?}");
    let mut client_frames = 0;
    for example in examples {
        let frame: Value =
            serde_json::from_str(example).unwrap_or_else(|err| panic!("{example}: {err}"));
        let kind = frame["type"].as_str().expect("a type");
        // Client examples are joins that carry the extensions: the decoder must take them
        // (and re-encode them to the same value).
        if kind == "join" && frame.get("totalUsers").is_none() {
            let decoded =
                ClientFrame::decode(example).unwrap_or_else(|err| panic!("{example}: {err}"));
            let again: Value = serde_json::from_str(&decoded.encode()).unwrap();
            assert_eq!(again, frame, "{example}");
            client_frames += 1;
        }
    }
    assert!(client_frames >= 3, "the join examples");
}
