//! The pipeline is declared in one place: the flow-building code of the
//! agent and the proxy never writes a table number, a register number or a
//! raw register match, and never builds a flow without the declaration.
//!
//! The scan reads `node-agent/src` and `kube-proxy/src` (their unit-test
//! modules, which compare flow texts with table numbers in them, excepted)
//! and fails on:
//! - constructs that bypass the declaration: `Flow::new(`, `GotoTable(`,
//!   `resubmit_table(`, `Field::Reg(`, `MatchField::reg(`,
//!   `MatchField::reg_masked(` (use `table::X.flow(priority::Y)`,
//!   `table::X.goto()`/`.next()`/`Stage::S.goto()`, `table::X.resubmit()`
//!   and the typed fields of `switchyard_pipeline::reg`);
//! - a numeric literal where a table or a priority goes: `table: 40`,
//!   `table: Some(40)`, `FlowMod::delete(40`, `.table = 40`, `priority: 200`,
//!   and flow texts such as `goto_table:40` or `resubmit(,40)`.

use std::path::{Path, PathBuf};

/// Constructs that bypass the declaration, whatever their arguments.
const FORBIDDEN: [&str; 6] = [
    "Flow::new(",
    "GotoTable(",
    "resubmit_table(",
    "Field::Reg(",
    "MatchField::reg(",
    "MatchField::reg_masked(",
];

/// Places where a table or priority goes: a digit right after one is a
/// literal number.
const NO_LITERAL_AFTER: [&str; 9] = [
    "table: ",
    "table: Some(",
    "FlowMod::delete(",
    ".table = ",
    "priority: ",
    "goto_table:",
    "resubmit(,",
    "Flow::new(",
    "table=",
];

/// One finding: file, line number, the line.
type Finding = (String, usize, String);

/// The findings in one file's text (before its unit-test module).
fn scan(name: &str, text: &str) -> Vec<Finding> {
    const TEST_ATTR: &str = "#[cfg(test)]";
    let tests_module = text.match_indices(TEST_ATTR).find_map(|(at, _)| {
        text[at + TEST_ATTR.len()..]
            .trim_start()
            .starts_with("mod ")
            .then_some(at)
    });
    let code = &text[..tests_module.unwrap_or(text.len())];
    let mut found = Vec::new();
    for (index, line) in code.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        let bypass = FORBIDDEN.iter().any(|needle| line.contains(needle));
        let literal = NO_LITERAL_AFTER.iter().any(|needle| {
            line.match_indices(needle).any(|(at, _)| {
                line[at + needle.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            })
        });
        if bypass || literal {
            found.push((name.to_string(), index + 1, line.trim().to_string()));
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn flow_code_writes_no_table_number() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["node-agent/src", "kube-proxy/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("node-agent/src/flows.rs"))
            && files.iter().any(|f| f.ends_with("kube-proxy/src/flows.rs")),
        "the scan must see the flow code: {files:?}"
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        found.extend(scan(&name, &text));
    }
    assert!(
        found.is_empty(),
        "flows must take tables, priorities and registers from switchyard_pipeline:\n{}",
        found
            .iter()
            .map(|(file, line, text)| format!("  {file}:{line}: {text}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_scan_catches_literals_and_bypasses() {
    let bad = [
        "f(table::L3_FORWARDING, 250).action(Action::GotoTable(50))",
        "let f = Flow::new(40, priority::SPECIFIC.value());",
        "    table: Some(40),",
        "    table: 30,",
        "    priority: 200,",
        "let mut delete = FlowMod::delete(30, Vec::new());",
        "request.table = 31;",
        ".action(Action::resubmit_table(table::L3_FORWARDING.id()))",
        ".matching(MatchField::reg(5, 100))",
        "SubField::bits(Field::Reg(0), 0, 3)",
        r#"let text = "goto_table:40";"#,
        r#"let text = "resubmit(,40)";"#,
    ];
    for line in bad {
        assert_eq!(scan("x.rs", line).len(), 1, "not caught: {line}");
    }
    let good = [
        "f(table::L3_FORWARDING, priority::SEGMENT_SWITCHED)",
        ".action(table::L3_FORWARDING.next().goto())",
        "    table: Some(table::CONNTRACK.id()),",
        "    priority: priority::SERVICE.value(),",
        "request.table = table::SERVICE_LB.id();",
        "// goto_table:40 in a comment",
        ".matching(reg::SEGMENT_VLAN.matching(pod.vlan))",
    ];
    for line in good {
        assert!(scan("x.rs", line).is_empty(), "wrongly caught: {line}");
    }
    let with_tests = "fn a() {}\n#[cfg(test)]\nmod tests { const T: &str = \"goto_table:40\"; }\n";
    assert!(scan("x.rs", with_tests).is_empty());
    // A test-only item elsewhere does not hide the code after it.
    let test_import = "#[cfg(test)]\nuse x::Y;\nfn a() { Flow::new(1, 2); }\n";
    assert_eq!(scan("x.rs", test_import).len(), 1);
}
