//! docs/configuration.md agrees with the binaries: every flag of
//! `switchyard-agent --help` and `switchyard-proxy --help` has a row, no row
//! names a flag that does not exist, each stated default is the binary's, the
//! agent's config keys are the config file's keys, and the conflist shown is
//! the one the DaemonSet installs. Also: the documentation pages link each
//! other and the benchmark results.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use clap::CommandFactory;
use common::{repo_root, workspace_binary};
use switchyard_agent::config::{FileConfig, Flags};

/// flag -> `[default: X]` text (if any), from clap's long help.
fn help_flags(help: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        let flag = t
            .strip_prefix("--")
            .or_else(|| t.split_once(", --").map(|(_, f)| f))
            .filter(|_| line.starts_with("  "));
        if let Some(f) = flag {
            let name: String = f
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-')
                .collect();
            if name != "help" && name != "version" {
                out.insert(name.clone(), None);
                current = Some(name);
            } else {
                current = None;
            }
        } else if let Some(name) = &current
            && let Some(i) = line.find("[default: ")
        {
            let rest = &line[i + "[default: ".len()..];
            let end = rest.rfind(']').unwrap_or(rest.len());
            out.insert(name.clone(), Some(rest[..end].to_string()));
        }
    }
    out
}

/// The table rows between `<!-- NAME` and `<!-- end NAME` of the page.
fn table_rows(page: &str, name: &str) -> Vec<Vec<String>> {
    let start = page
        .find(&format!("<!-- {name}"))
        .unwrap_or_else(|| panic!("marker {name} missing"));
    let end = page
        .find(&format!("<!-- end {name}"))
        .unwrap_or_else(|| panic!("end marker {name} missing"));
    page[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            // Split on `|` not escaped as `\|`.
            let mut cells = Vec::new();
            let mut cell = String::new();
            let mut chars = l.trim().trim_matches('|').chars().peekable();
            while let Some(c) = chars.next() {
                if c == '\\' && chars.peek() == Some(&'|') {
                    cell.push('|');
                    chars.next();
                } else if c == '|' {
                    cells.push(cell.trim().to_string());
                    cell.clear();
                } else {
                    cell.push(c);
                }
            }
            cells.push(cell.trim().to_string());
            cells
        })
        .collect()
}

/// `--name ...` in a table's first cell -> `name`.
fn row_flag(cell: &str) -> String {
    cell.trim_start_matches('`')
        .trim_start_matches("--")
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '-')
        .collect()
}

fn check_table(page: &str, marker: &str, help: &str, binary: &str) -> Vec<Vec<String>> {
    let flags = help_flags(help);
    assert!(
        flags.len() >= 5,
        "{binary}: parsed too few flags from --help: {flags:?}"
    );
    let rows = table_rows(page, marker);
    let documented: BTreeSet<String> = rows.iter().map(|r| row_flag(&r[0])).collect();
    let actual: BTreeSet<String> = flags.keys().cloned().collect();
    assert_eq!(
        documented, actual,
        "docs/configuration.md {binary} flags (left) vs `{binary} --help` (right)"
    );
    for row in &rows {
        let flag = row_flag(&row[0]);
        if let Some(Some(default)) = flags.get(&flag) {
            assert!(
                row[2].contains(default.as_str()),
                "docs/configuration.md: {binary} --{flag}: default {:?} should state {default:?}",
                row[2]
            );
        }
    }
    rows
}

fn page(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("docs").join(name))
        .unwrap_or_else(|e| panic!("docs/{name}: {e}"))
}

#[test]
fn configuration_reference_matches_the_agent() {
    let page = page("configuration.md");
    let help = Flags::command().render_long_help().to_string();
    let rows = check_table(&page, "agent-flags", &help, "switchyard-agent");
    // Config keys: exactly the config file's fields.
    let keys: BTreeSet<String> = serde_json::to_value(FileConfig::default())
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let documented: BTreeSet<String> = rows
        .iter()
        .map(|r| {
            r[1].trim_matches('`')
                .split('`')
                .next()
                .unwrap()
                .to_string()
        })
        .filter(|k| k != "—")
        .collect();
    assert_eq!(
        documented, keys,
        "config keys in docs (left) vs FileConfig (right)"
    );
}

#[test]
fn configuration_reference_matches_the_proxy() {
    let page = page("configuration.md");
    let out = Command::new(workspace_binary("switchyard-proxy", "switchyard-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let rows = check_table(&page, "proxy-flags", &help, "switchyard-proxy");
    // Environment variables stated in the table are the ones clap reads.
    for row in rows {
        let env = row[1].trim_matches('`');
        if env != "—" {
            assert!(
                help.contains(&format!("[env: {env}=")),
                "--{}: environment {env} not in --help",
                row_flag(&row[0])
            );
        }
    }
}

#[test]
fn help_parser_sees_defaults_and_catches_missing_rows() {
    let help = Flags::command().render_long_help().to_string();
    let flags = help_flags(&help);
    assert_eq!(flags["tunnel-type"].as_deref(), Some("geneve"));
    assert_eq!(flags["config"], None);
    let page = "<!-- t -->\n| `--mtu BYTES` | `mtu` | `1500` | x |\n<!-- end t -->\n";
    let result = std::panic::catch_unwind(|| check_table(page, "t", &help, "agent"));
    assert!(result.is_err(), "a table missing flags must fail");
}

#[test]
fn configuration_page_shows_the_installed_conflist() {
    let page = page("configuration.md");
    let block = page
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a json block");
    assert_eq!(block, switchyard_deploy::CONFLIST_SOURCE);
}

#[test]
fn documentation_pages_exist_and_link_each_other() {
    let pages = [
        "install.md",
        "configuration.md",
        "segments.md",
        "pipeline.md",
        "troubleshooting.md",
        "vagrant.md",
        "cni.md",
        "benchmarks.md",
    ];
    let mut linked = BTreeSet::new();
    for name in pages {
        let text = page(name);
        for target in pages {
            if text.contains(&format!("({target}")) || text.contains(&format!("(docs/{target}")) {
                linked.insert(target);
            }
        }
        // Relative links to files of the repository resolve.
        for (i, _) in text.match_indices("](") {
            let link: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            if link.starts_with("http") || link.starts_with('#') {
                continue;
            }
            let path = link.split('#').next().unwrap();
            assert!(
                repo_root().join("docs").join(path).exists(),
                "docs/{name}: broken link {link}"
            );
        }
    }
    for target in pages {
        assert!(linked.contains(target), "no page links {target}");
    }
}

#[test]
fn pipeline_page_matches_the_shared_pipeline_definition() {
    use switchyard_pipeline::{self as pipeline, priority, table, zone};
    let page = page("pipeline.md");
    let rows = |marker: &str| -> Vec<Vec<String>> {
        let start = page
            .find(&format!("<!-- {marker}"))
            .unwrap_or_else(|| panic!("marker {marker}"));
        let end = page
            .find(&format!("<!-- end {marker}"))
            .unwrap_or_else(|| panic!("end marker {marker}"));
        page[start..end]
            .lines()
            .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .collect()
    };
    // Every declared table, reserved slots included, in pipeline order,
    // with its stage and owner; exactly the reserved ones say so.
    let documented = rows("pipeline-tables");
    let declared = table::PIPELINE;
    assert_eq!(documented.len(), declared.len(), "{documented:?}");
    for (row, t) in documented.iter().zip(declared) {
        assert_eq!(row[0], t.id().to_string(), "number of {t}");
        assert_eq!(row[1].trim_matches('`'), t.name(), "table {}", t.id());
        assert_eq!(row[2], format!("{:?}", t.stage()), "stage of {t}");
        let expected_owner = match t.owner() {
            pipeline::Owner::Agent => "agent",
            pipeline::Owner::Proxy => "proxy",
        };
        assert_eq!(row[3], expected_owner, "owner of table {t}");
        assert_eq!(
            row[4].starts_with("*reserved slot*"),
            t.is_reserved(),
            "reserved slot {t}: {}",
            row[4]
        );
    }
    // Every named priority.
    let documented = rows("pipeline-priorities");
    assert_eq!(documented.len(), priority::ALL.len(), "{documented:?}");
    for (row, (name, value)) in documented.iter().zip(priority::ALL) {
        assert_eq!(row[0], value.value().to_string(), "priority {name}");
        assert_eq!(row[1].trim_matches('`'), name);
    }
    for (zone, what) in [
        (zone::POD, "pod"),
        (zone::SNAT, "SNAT"),
        (zone::HAIRPIN, "hairpin"),
    ] {
        assert!(
            page.contains(&format!("zone `{:#x}`", zone.id())),
            "zone {what} {:#x}",
            zone.id()
        );
    }
    assert!(page.contains(&pipeline::HAIRPIN_SNAT_IP.to_string()));
    assert!(page.contains(&format!("{:#x}", pipeline::Cookie::MAGIC)));
    let (agent, mask) = pipeline::Cookie::owner_mask(pipeline::Owner::Agent);
    assert!(
        page.contains(&format!("cookie={agent:#x}/{mask:#x}")),
        "agent cookie mask"
    );
    let (proxy, mask) = pipeline::Cookie::owner_mask(pipeline::Owner::Proxy);
    assert!(
        page.contains(&format!("cookie={proxy:#x}/{mask:#x}")),
        "proxy cookie mask"
    );
    let (pod, mask) = pipeline::Cookie::object_mask(pipeline::Owner::Agent, 17);
    assert!(
        page.contains(&format!("cookie={pod:#x}/{mask:#x}")),
        "pod cookie mask"
    );
    assert!(page.contains(&format!("ofport {}", pipeline::ofport::FIRST_POD)));
}

#[test]
fn troubleshooting_covers_every_cni_error_code() {
    let page = page("troubleshooting.md");
    let start = page.find("<!-- cni-codes").expect("marker");
    let end = page.find("<!-- end cni-codes").expect("end marker");
    let mut documented = BTreeSet::new();
    for line in page[start..end].lines().filter(|l| l.starts_with("| ")) {
        let first = line.trim_matches('|').split('|').next().unwrap();
        for code in first.split(',') {
            if let Ok(code) = code.trim().parse::<u32>() {
                documented.insert(code);
            }
        }
    }
    let actual: BTreeSet<u32> = switchyard_cni::ErrorCode::ALL
        .iter()
        .map(|c| *c as u32)
        .collect();
    assert_eq!(
        documented, actual,
        "troubleshooting.md codes (left) vs ErrorCode (right)"
    );
}
