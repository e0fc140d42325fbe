//! docs/configuration.md agrees with the binaries: every flag of
//! `switchyard-agent --help` and `switchyard-proxy --help` has a row, no row
//! names a flag that does not exist, each stated default is the binary's, the
//! agent's config keys are the config file's keys, and the conflist shown is
//! the one the DaemonSet installs. Also: the documentation pages link each
//! other and the benchmark results. And docs/features.tsv, the list of what
//! is built with the tests that show it: every test it names exists and is
//! not ignored, docs/install.md's feature table is generated from it, and no
//! page (docs/*.md, the READMEs, the Vagrant lab's comments, the demo's
//! text) has a sentence calling a built feature missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use clap::CommandFactory;
use common::{repo_root, rust_files, workspace_binary};
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
        "observability.md",
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

// ---------------------------------------------------------------------------
// docs/features.tsv: what is built, the tests that prove it, and no page
// saying a built feature is missing.

/// One row of docs/features.tsv.
#[derive(Debug)]
struct Feature {
    name: String,
    status: String,
    /// (path from the repository root, test function name)
    tests: Vec<(String, String)>,
    keywords: Vec<String>,
}

fn features() -> Vec<Feature> {
    let text = std::fs::read_to_string(repo_root().join("docs/features.tsv")).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = line.split('\t').collect();
        let [name, status, tests, keywords] = cells[..] else {
            panic!(
                "docs/features.tsv:{}: expected 4 tab-separated columns, got {}",
                i + 1,
                cells.len()
            );
        };
        let list = |cell: &str| -> Vec<String> {
            cell.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "-")
                .map(String::from)
                .collect()
        };
        let tests = list(tests)
            .into_iter()
            .map(|t| {
                let (path, func) = t.split_once("::").unwrap_or_else(|| {
                    panic!(
                        "docs/features.tsv:{}: test {t:?} is not path::function",
                        i + 1
                    )
                });
                (path.to_string(), func.to_string())
            })
            .collect();
        out.push(Feature {
            name: name.to_string(),
            status: status.to_string(),
            tests,
            keywords: list(keywords),
        });
    }
    out
}

/// Whether `func` is a test function of `source`: `fn func(` (maybe
/// `async`) under `#[test]` or `#[...::test...]`, without `#[ignore]`.
fn test_function_status(source: &str, func: &str) -> Result<(), String> {
    let lines: Vec<&str> = source.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("async ").unwrap_or(l);
            l.starts_with(&format!("fn {func}("))
        })
        .ok_or_else(|| format!("no `fn {func}(`"))?;
    let attributes: Vec<&str> = lines[..at]
        .iter()
        .rev()
        .map(|l| l.trim())
        .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
        .filter(|l| l.starts_with("#["))
        .collect();
    if !attributes
        .iter()
        .any(|a| *a == "#[test]" || (a.contains("::test") && !a.contains("cfg")))
    {
        return Err(format!("`fn {func}` has no #[test] attribute"));
    }
    if let Some(a) = attributes.iter().find(|a| a.starts_with("#[ignore")) {
        return Err(format!("`fn {func}` is {a}"));
    }
    Ok(())
}

/// The table docs/install.md holds between its `features` markers.
fn features_table(features: &[Feature]) -> String {
    let mut out = String::from("| feature | status | shown by |\n|---|---|---|\n");
    for f in features {
        let tests = if f.tests.is_empty() {
            "—".to_string()
        } else {
            f.tests
                .iter()
                .map(|(path, func)| format!("`{func}` (`{path}`)"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let status = match f.status.as_str() {
            "built" => "built",
            "planned" => "not built (planned)",
            _ => "not built",
        };
        out.push_str(&format!("| {} | {status} | {tests} |\n", f.name));
    }
    out
}

#[test]
fn features_list_names_existing_tests() {
    let features = features();
    assert!(features.len() >= 10, "{features:?}");
    let mut problems = Vec::new();
    for f in &features {
        match f.status.as_str() {
            "built" => {
                if f.tests.is_empty() || f.keywords.is_empty() {
                    problems.push(format!(
                        "{:?}: a built feature needs a test and keywords",
                        f.name
                    ));
                }
            }
            "planned" | "unsupported" => {}
            other => problems.push(format!(
                "{:?}: status {other:?} is not built, planned or unsupported",
                f.name
            )),
        }
        for (path, func) in &f.tests {
            let source = match std::fs::read_to_string(repo_root().join(path)) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{:?}: {path}: {e}", f.name));
                    continue;
                }
            };
            if let Err(why) = test_function_status(&source, func) {
                problems.push(format!("{:?}: {path}: {why}", f.name));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/features.tsv:\n{}",
        problems.join("\n")
    );
}

#[test]
fn install_page_feature_table_is_generated_from_the_list() {
    let path = repo_root().join("docs/install.md");
    let page = std::fs::read_to_string(&path).unwrap();
    let start_marker = "<!-- features: generated from docs/features.tsv -->\n";
    let end_marker = "<!-- end features -->";
    let start = page.find(start_marker).expect("features marker") + start_marker.len();
    let end = page.find(end_marker).expect("end features marker");
    let expected = features_table(&features());
    if page[start..end] == expected {
        return;
    }
    if std::env::var_os("SWITCHYARD_UPDATE_DOCS").is_some() {
        let updated = format!("{}{expected}{}", &page[..start], &page[end..]);
        std::fs::write(&path, updated).unwrap();
        println!("rewrote the feature table of docs/install.md");
        return;
    }
    panic!(
        "docs/install.md's feature table is not the one docs/features.tsv gives; \
         rewrite it with `SWITCHYARD_UPDATE_DOCS=1 cargo test -p switchyard-deploy --test docs`. \
         Expected:\n{expected}"
    );
}

/// Substrings that say something is missing.
const MISSING_PHRASES: &[&str] = &[
    "not built",
    "not implemented",
    "accepted but",
    "in progress",
    "stand-in",
    " lands",
    "landed",
    "#[ignore]",
];

/// Words that, up to 8 words before "yet", make it "not ... yet".
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "cannot", "isn't", "aren't", "doesn't", "don't", "hasn't", "haven't",
];

/// What in `sentence` (lowercase) says something is missing, if anything.
fn missing_phrase(sentence: &str) -> Option<String> {
    if let Some(p) = MISSING_PHRASES.iter().find(|p| sentence.contains(*p)) {
        return Some(p.trim().to_string());
    }
    let words: Vec<&str> = sentence
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        if *w == "yet"
            && let Some(n) = words[i.saturating_sub(8)..i]
                .iter()
                .find(|n| NEGATIONS.contains(n))
        {
            return Some(format!("{n} ... yet"));
        }
    }
    None
}

/// The text units of a file, each a list of (line number, text): paragraphs,
/// list items, table rows, headings and code lines of Markdown; comment
/// paragraphs of shell scripts and the Vagrantfile; lines of Rust.
fn blocks(path: &str, text: &str) -> Vec<Vec<(usize, String)>> {
    let mut out: Vec<Vec<(usize, String)>> = Vec::new();
    let mut current: Vec<(usize, String)> = Vec::new();
    let flush = |current: &mut Vec<(usize, String)>, out: &mut Vec<Vec<(usize, String)>>| {
        if !current.is_empty() {
            out.push(std::mem::take(current));
        }
    };
    let markdown = path.ends_with(".md");
    let rust = path.ends_with(".rs");
    let mut in_code = false;
    let mut in_generated_table = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        // docs/install.md's feature table is docs/features.tsv, checked above.
        if t.starts_with("<!-- features:") || t.starts_with("<!-- end features") {
            in_generated_table = t.starts_with("<!-- features:");
            continue;
        }
        if in_generated_table {
            continue;
        }
        if rust {
            out.push(vec![(n, t.to_string())]);
        } else if markdown {
            if t.starts_with("```") {
                in_code = !in_code;
                flush(&mut current, &mut out);
            } else if in_code || t.starts_with('#') || t.starts_with('|') || t.starts_with("<!--") {
                flush(&mut current, &mut out);
                out.push(vec![(n, t.to_string())]);
            } else if t.is_empty() {
                flush(&mut current, &mut out);
            } else {
                let item = t.starts_with("- ")
                    || t.starts_with("* ")
                    || t.split_once(". ").is_some_and(|(d, _)| {
                        !d.is_empty() && d.chars().all(|c| c.is_ascii_digit())
                    });
                if item {
                    flush(&mut current, &mut out);
                }
                current.push((n, t.to_string()));
            }
        } else {
            // Shell and Ruby: comments only.
            match t.strip_prefix('#').filter(|_| !t.starts_with("#!")) {
                Some(c) if !c.trim().is_empty() => current.push((n, c.trim().to_string())),
                _ => flush(&mut current, &mut out),
            }
        }
    }
    flush(&mut current, &mut out);
    out
}

/// `file:line: ...` for every sentence of `text` that says a built feature
/// is missing.
fn stale_sentences(path: &str, text: &str, features: &[Feature]) -> Vec<String> {
    let mut found = Vec::new();
    for block in blocks(path, text) {
        // The block as one string, and where each line starts in it.
        let mut joined = String::new();
        let mut starts = Vec::new();
        for (n, line) in &block {
            starts.push((joined.len(), *n));
            joined.push_str(line);
            joined.push(' ');
        }
        let line_at = |offset: usize| {
            starts
                .iter()
                .rev()
                .find(|(s, _)| *s <= offset)
                .map_or(0, |(_, n)| *n)
        };
        // Sentences: split after . ; ! ? followed by a space, and at table cell borders.
        let mut begin = 0;
        let bytes = joined.as_bytes();
        for (i, c) in joined.char_indices() {
            let end = match c {
                '|' => true,
                '.' | ';' | '!' | '?' => bytes.get(i + 1) == Some(&b' '),
                _ => false,
            };
            if !end && i + 1 < joined.len() {
                continue;
            }
            let sentence = &joined[begin..=i];
            let lower = sentence.to_lowercase();
            if let Some(phrase) = missing_phrase(&lower) {
                for f in features.iter().filter(|f| f.status == "built") {
                    let names = f.tests.iter().map(|(_, func)| func.to_lowercase());
                    if let Some(k) = f
                        .keywords
                        .iter()
                        .cloned()
                        .chain(names)
                        .find(|k| lower.contains(k.as_str()))
                    {
                        found.push(format!(
                            "{path}:{}: says \"{phrase}\" next to {k:?}, but {:?} is built: {}",
                            line_at(begin + sentence.len() - sentence.trim_start().len()),
                            f.name,
                            sentence.trim()
                        ));
                        break;
                    }
                }
            }
            begin = i + c.len_utf8();
        }
    }
    found
}

/// The pages that describe what is built: docs/*.md, every README.md, the
/// Vagrant lab's comments, and the demo's printed text.
fn described_files() -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    walk(&path, root, out);
                }
            } else if name == "README.md" {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let root = repo_root();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    for (dir, ext) in [("docs", "md"), ("vagrant", "sh")] {
        let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        files.sort();
        out.extend(files);
    }
    out.push("Vagrantfile".into());
    out.push("tests/lab/src/cluster/demo.rs".into());
    out
}

#[test]
fn no_page_calls_a_built_feature_missing() {
    let features = features();
    let files = described_files();
    for expected in [
        "README.md",
        "docs/install.md",
        "node-agent/README.md",
        "kube-proxy/README.md",
        "tests/lab/README.md",
        "vagrant/node.sh",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected}: {files:?}");
    }
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(repo_root().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        found.extend(stale_sentences(file, &text, &features));
    }
    assert!(
        found.is_empty(),
        "these sentences call built features (docs/features.tsv) missing; fix them, \
         or the feature's status:\n{}",
        found.join("\n")
    );
}

#[test]
fn stale_sentence_check_catches_the_old_sentences_only() {
    let features = features();
    let stale = [
        (
            "docs/configuration.md",
            "| `--tunnel-type geneve\\|vxlan` | `tunnel-type` | `geneve` | encapsulation between nodes for overlay segments. **Accepted but not used yet**: the overlay between nodes is in progress |",
        ),
        (
            "docs/troubleshooting.md",
            "| cross-node traffic leaves through `sy-gw0` and is lost | expected until the overlay lands: the node's routing table must route the other nodes' pod CIDRs |",
        ),
        (
            "docs/install.md",
            "- **Not built yet (in progress):** the Geneve/VXLAN overlay between nodes\n  (`tunnel-type` is accepted but unused), so pods on different nodes reach\n  each other only if your network routes each node's pod CIDR to that node.",
        ),
        (
            "docs/install.md",
            "Egress SNAT of pod traffic to the node address\nis not there yet.",
        ),
        (
            "docs/vagrant.md",
            "| `SWITCHYARD_SEGMENTS` | `overlay` | segment `blue`; the agent does not trunk to the uplink yet |",
        ),
        (
            "tests/lab/README.md",
            "  `e2e_cluster_ip_from_nodes` and `e2e_cluster_ip_from_vlan_segment_pods` are `#[ignore]`d until\n  nodes and `vlan` pods can reach ClusterIPs.",
        ),
        (
            "vagrant/node.sh",
            "# it on the Node object). Switchyard's Geneve/VXLAN overlay between nodes is\n# not built yet; until it is, the lab routes pod CIDRs over the node network",
        ),
        (
            "tests/lab/src/cluster/demo.rs",
            "                \"the proxy runs but does not program OVS yet\" // ClusterIP",
        ),
    ];
    for (path, text) in stale {
        let found = stale_sentences(path, text, &features);
        assert!(!found.is_empty(), "{path}: not caught: {text}");
        assert!(found[0].starts_with(&format!("{path}:")), "{found:?}");
    }
    let fine = [
        "- **Not built:** LoadBalancer health checks, IPv6.",
        "It also runs on nodes that are not ready yet (they lack a network).",
        "CNI errors the agent returns: 11 not ready yet; 50 STATUS when OVSDB is down.",
        "Pods on different nodes reach each other through the Geneve overlay.",
    ];
    for text in fine {
        let found = stale_sentences("docs/x.md", text, &features);
        assert!(found.is_empty(), "{found:?}");
    }
    // The line reported is the one the sentence starts on.
    let found = stale_sentences(
        "docs/x.md",
        "First line is fine.\nThe VXLAN overlay is\nnot built yet.",
        &features,
    );
    assert!(found[0].starts_with("docs/x.md:2:"), "{found:?}");
}

#[test]
fn test_function_check_rejects_ignored_missing_and_plain_functions() {
    let source = "#[test]\nfn plain() {}\n\n#[test]\n#[ignore = \"later\"]\nfn ignored() {}\n\n\
                  /// Doc.\n#[tokio::test(flavor = \"multi_thread\")]\nasync fn asynchronous() {}\n\n\
                  fn helper() {}\n";
    assert_eq!(test_function_status(source, "plain"), Ok(()));
    assert_eq!(test_function_status(source, "asynchronous"), Ok(()));
    assert!(
        test_function_status(source, "ignored")
            .unwrap_err()
            .contains("#[ignore")
    );
    assert!(
        test_function_status(source, "helper")
            .unwrap_err()
            .contains("no #[test]")
    );
    assert!(
        test_function_status(source, "absent")
            .unwrap_err()
            .contains("no `fn absent(`")
    );
}

/// Every metric the daemons register (`Registry::with_prefix` of their
/// `src/metrics.rs`, plus each `register("name", ...)` anywhere in their
/// `src/`, e.g. the agent's `announce/metrics.rs`) is listed in
/// docs/observability.md (counters with the `_total` the client appends).
#[test]
fn observability_page_lists_every_registered_metric() {
    let page = page("observability.md");
    let mut missing = Vec::new();
    let mut seen = 0;
    for krate in ["node-agent", "kube-proxy", "controller", "cpvip"] {
        let metrics_rs = format!("{krate}/src/metrics.rs");
        let source = std::fs::read_to_string(repo_root().join(&metrics_rs)).unwrap();
        let prefix = source
            .split("Registry::with_prefix(\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{metrics_rs}: no Registry::with_prefix"))
            .to_owned();
        for file in rust_files(&repo_root().join(krate).join("src")) {
            let source = std::fs::read_to_string(&file).unwrap();
            for chunk in source.split(".register(").skip(1) {
                // Only registrations with a literal name (a metric), not other `register` calls.
                let Some(name) = chunk
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|rest| rest.split('"').next())
                else {
                    continue;
                };
                seen += 1;
                let full = format!("{prefix}_{name}");
                // The name as a whole word: `x` must not pass because `x_seconds` is listed.
                let listed = [format!("`{full}`"), format!("`{full}_total`")]
                    .iter()
                    .any(|n| page.contains(n.as_str()));
                if !listed {
                    missing.push(format!("{full} ({})", file.display()));
                }
            }
        }
    }
    assert!(seen >= 40, "parsed only {seen} registrations");
    assert!(
        missing.is_empty(),
        "docs/observability.md does not list {missing:?}"
    );
}

/// The Grafana dashboard (`deploy/grafana-dashboard.json`) parses and queries
/// only metrics docs/observability.md lists (histograms by their `_bucket`).
#[test]
fn grafana_dashboard_queries_documented_metrics() {
    let page = page("observability.md");
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("switchyard_") {
                    continue;
                }
                queried += 1;
                let name = word.strip_suffix("_bucket").unwrap_or(word);
                assert!(
                    page.contains(&format!("`{name}`")),
                    "{}: {name} is not in docs/observability.md",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 10, "{queried} metric references");
}
