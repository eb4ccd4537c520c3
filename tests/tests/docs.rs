//! The documentation cannot drift from the code.
//!
//! 1. Every fenced YAML block in `README.md` and `docs/*.md`, and every `examples/*.yaml`, is
//!    validated. The fence's info string says what the block is:
//!
//!    | info string            | checked with                       |
//!    |------------------------|------------------------------------|
//!    | `yaml` (or `yml`)      | `hako check --config` (a complete hako configuration) |
//!    | `yaml partial`         | nothing: an intentional fragment of a configuration |
//!    | `yaml prometheus-config` | `promtool check config` (a Prometheus server configuration) |
//!    | `yaml prometheus-rules`  | `promtool check rules` (a Prometheus rules file) |
//!
//!    Any other word after `yaml` is an error, so a typo cannot silently skip a block.
//! 2. Every configuration key that `hako check` accepts, at every level, has a row in the
//!    tables of `docs/configuration.md` (the accepted keys are read from hako's own
//!    "unknown key; expected one of ..." message, not from a list kept here).
//!
//! 3. `dist/hako.service` passes `systemd-analyze verify` (with ExecStart pointing at the
//!    freshly built binary), when systemd-analyze is installed.
//!
//! No root needed: `hako check` only reads files. Needs the `hako` binary beside the test
//! executable (`cargo test --workspace` builds it); the `prometheus-*` blocks need `promtool`
//! (Debian package `prometheus`) and are reported as skipped without it.

use std::path::{Path, PathBuf};
use std::process::Command;

use hako_tests::{hako_bin, output_result, repo_root};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hako,
    Partial,
    PromConfig,
    PromRules,
}

#[derive(Debug)]
struct Block {
    /// `docs/x.md:LINE` of the opening fence.
    origin: String,
    kind: Kind,
    text: String,
}

/// Fenced YAML blocks of a Markdown text. Errors name the origin of a bad info string.
fn yaml_blocks(name: &str, markdown: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, Option<Kind>, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split_whitespace();
                    let kind = match words.next() {
                        Some("yaml" | "yml") => Some(match words.next() {
                            None => Kind::Hako,
                            Some("partial") => Kind::Partial,
                            Some("prometheus-config") => Kind::PromConfig,
                            Some("prometheus-rules") => Kind::PromRules,
                            Some(other) => {
                                return Err(format!(
                                "{name}:{}: unknown yaml block qualifier `{other}` (use nothing, \
                                     `partial`, `prometheus-config` or `prometheus-rules`)",
                                i + 1
                            ))
                            }
                        }),
                        _ => None,
                    };
                    open = Some((i + 1, kind, String::new()));
                }
            }
            Some((start, kind, text)) => {
                if trimmed.starts_with("```") && trimmed.trim_end() == "```" {
                    if let Some(kind) = *kind {
                        blocks.push(Block {
                            origin: format!("{name}:{start}"),
                            kind,
                            text: std::mem::take(text),
                        });
                    }
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    if let Some((start, _, _)) = open {
        return Err(format!("{name}:{start}: code fence never closed"));
    }
    Ok(blocks)
}

/// The Markdown files whose YAML blocks are checked.
fn markdown_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let readme = root.join("README.md");
    if readme.is_file() {
        files.push(readme);
    }
    files
}

fn relative(p: &Path) -> String {
    p.strip_prefix(repo_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Runs `hako check --config FILE`; Err carries its output.
fn hako_check(file: &Path) -> Result<(), String> {
    let out = Command::new(hako_bin())
        .arg("check")
        .arg("--config")
        .arg(file)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hako check");
    output_result(&out)
}

fn promtool_available() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Checks one block in `dir`; Err describes the failure. Ok(false): skipped.
fn check_block(dir: &Path, n: usize, block: &Block, promtool: bool) -> Result<bool, String> {
    let file = dir.join(format!("block{n}.yaml"));
    std::fs::write(&file, &block.text).expect("write block");
    let (what, result) = match block.kind {
        Kind::Partial => return Ok(false),
        Kind::Hako => ("hako check", hako_check(&file)),
        Kind::PromConfig | Kind::PromRules if !promtool => return Ok(false),
        Kind::PromConfig | Kind::PromRules => {
            let sub = if block.kind == Kind::PromConfig {
                "config"
            } else {
                "rules"
            };
            let out = Command::new("promtool")
                .args(["check", sub])
                .arg(&file)
                .output()
                .expect("run promtool");
            ("promtool check", output_result(&out))
        }
    };
    result.map(|()| true).map_err(|e| {
        format!(
            "{}: {what} failed:\n{}\n--- block ---\n{}",
            block.origin,
            e.trim_end(),
            block.text
        )
    })
}

#[test]
fn every_yaml_example_in_the_docs_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let promtool = promtool_available();
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    let mut skipped = Vec::new();
    let mut n = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("read markdown");
        let blocks = match yaml_blocks(&relative(&file), &text) {
            Ok(b) => b,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        for block in blocks {
            n += 1;
            match check_block(dir.path(), n, &block, promtool) {
                Ok(true) => checked.push(block.origin),
                Ok(false) => skipped.push(format!("{} ({:?})", block.origin, block.kind)),
                Err(e) => failures.push(e),
            }
        }
    }
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    examples.sort();
    for file in examples {
        // Checked in place: relative paths in an example resolve against examples/.
        match hako_check(&file) {
            Ok(()) => checked.push(relative(&file)),
            Err(e) => failures.push(format!(
                "{}: hako check failed:\n{}",
                relative(&file),
                e.trim_end()
            )),
        }
    }
    println!("checked: {}", checked.join(", "));
    println!(
        "skipped: {}",
        if skipped.is_empty() {
            "none".to_string()
        } else {
            skipped.join(", ")
        }
    );
    assert!(
        failures.is_empty(),
        "{} documentation example(s) fail:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // Not vacuous: the configuration reference, the metrics reference and the example file are
    // among what was checked.
    for must in ["docs/configuration.md:", "examples/hako.yaml"] {
        assert!(
            checked.iter().any(|c| c.starts_with(must)),
            "nothing checked from {must}: {checked:?}"
        );
    }
    if promtool {
        assert!(
            checked.iter().any(|c| c.starts_with("docs/metrics.md:")),
            "{checked:?}"
        );
    } else {
        eprintln!("promtool not installed: prometheus-* blocks skipped");
    }
}

#[test]
fn the_checker_rejects_a_broken_block_and_a_bad_qualifier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let md = "intro\n\n```yaml\napps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n    \
              command: [\"/bin/true\"]\n    limits: {memroy: 64Mi}\n```\n\n```yaml partial\nlimits: {}\n```\n";
    let blocks = yaml_blocks("t.md", md).expect("parse");
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].origin, "t.md:3");
    let err =
        check_block(dir.path(), 1, &blocks[0], false).expect_err("a misspelt key is rejected");
    assert!(err.contains("memroy") && err.contains("t.md:3"), "{err}");
    assert_eq!(
        check_block(dir.path(), 2, &blocks[1], false),
        Ok(false),
        "partial blocks are skipped"
    );

    let err = yaml_blocks("t.md", "```yaml parital\na: 1\n```\n").expect_err("typo in qualifier");
    assert!(err.contains("t.md:1") && err.contains("parital"), "{err}");
    assert!(
        yaml_blocks("t.md", "```yaml\na: 1\n").is_err(),
        "unclosed fence"
    );
}

/// The keys `hako check` accepts at one level, from its unknown-key message.
fn accepted_keys(dir: &Path, level: &str, yaml: &str) -> Vec<String> {
    let file = dir.join(format!("keys-{}.yaml", level.replace(['.', '[', ']'], "_")));
    std::fs::write(&file, yaml).expect("write probe");
    let err = hako_check(&file).expect_err("an unknown key is rejected");
    // "unknown key; expected one of `a`, `b`, ..." or "... expected `a` or `b`"
    let list = err
        .split_once("unknown key; expected")
        .unwrap_or_else(|| panic!("{level}: no key list in hako's message: {err}"))
        .1
        .lines()
        .next()
        .unwrap_or("");
    let keys: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(keys.len() >= 2, "{level}: {err}");
    keys
}

#[test]
fn every_accepted_configuration_key_is_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = "apps:\n  - name: web\n    hosts: [web.test]\n    rootfs: host\n    command: [\"/bin/true\"]\n";
    let probes: Vec<(&str, String)> = vec![
        ("top level", format!("zz_not_a_key: 1\n{app}")),
        ("apps[]", format!("{app}    zz_not_a_key: 1\n")),
        ("user", format!("{app}    user: {{zz_not_a_key: 1}}\n")),
        ("limits", format!("{app}    limits: {{zz_not_a_key: 1}}\n")),
        (
            "lifetime",
            format!("{app}    lifetime: {{zz_not_a_key: 1}}\n"),
        ),
        (
            "scaling",
            format!("{app}    scaling: {{zz_not_a_key: 1}}\n"),
        ),
        (
            "readiness",
            format!("{app}    readiness: {{zz_not_a_key: 1}}\n"),
        ),
        ("spike", format!("{app}    spike: {{zz_not_a_key: 1}}\n")),
        ("governor", format!("{app}governor: {{zz_not_a_key: 1}}\n")),
    ];
    let reference = std::fs::read_to_string(repo_root().join("docs/configuration.md"))
        .expect("configuration.md");
    let rows: Vec<&str> = reference.lines().filter(|l| l.starts_with("| `")).collect();
    let mut missing = Vec::new();
    let mut total = 0;
    for (level, yaml) in probes {
        for key in accepted_keys(dir.path(), level, &yaml) {
            total += 1;
            // A key has its own row, or (for small maps like `user: {uid, gid}`) is named in
            // the row of the key it belongs to.
            let own_row = rows.iter().any(|r| r.starts_with(&format!("| `{key}` |")));
            let in_parent_row = rows
                .iter()
                .any(|r| r.starts_with(&format!("| `{level}` |")) && r.contains(key.as_str()));
            if !own_row && !in_parent_row {
                missing.push(format!("{level}: `{key}`"));
            }
        }
    }
    assert!(total > 40, "only {total} keys found");
    assert!(
        missing.is_empty(),
        "accepted by `hako check` but without a table row in docs/configuration.md: {}",
        missing.join(", ")
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let unit =
        std::fs::read_to_string(repo_root().join("dist/hako.service")).expect("dist/hako.service");
    for must in [
        "ExecStart=/usr/local/bin/hako serve --config /etc/hako/hako.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Delegate=yes",
        "KillMode=mixed",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l == must),
            "dist/hako.service lacks `{must}`"
        );
    }
    if !Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: systemd-analyze not installed");
        return;
    }
    // verify insists that the programs exist: point them at the binary under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hako.service");
    let bin = hako_bin();
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/hako", &bin.display().to_string()),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the host's other units (this machine may not boot with systemd) are not ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("hako.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}
