//! `hako-bench launcher` end to end, small: every runtime installed here gets its samples over
//! the rounds, crun runs on a hybrid host without a wrapper, and the host's mounts are as
//! before.
use std::process::Command;

use hako_tests::*;

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo")
}

/// Removes the `hako-run` parent that `hako run` and `hako bench-spawn` keep, on every path.
struct RunParent;

impl Drop for RunParent {
    fn drop(&mut self) {
        remove_empty_cgroup_parent("hako-run");
    }
}

#[test]
fn launcher_comparison_takes_every_runtime_in_rounds() {
    require_root!();
    let _s = serial();
    let _parent = RunParent;
    let fs = Rootfs::new();
    let hako = hako_bin();
    let bench = hako.with_file_name("hako-bench");
    assert!(bench.is_file(), "{} not built", bench.display());
    let dir = tempfile::tempdir().expect("tempdir");
    // The floor program, where it can be built (a static C toolchain) and run (cgroup v1).
    let floor = dir.path().join("floor");
    let floor_ok = !cgroup_v2_unified()
        && Command::new("cc")
            .args(["-O2", "-static", "-o"])
            .arg(&floor)
            .arg(repo_root().join("bench/floor/floor.c"))
            .status()
            .is_ok_and(|s| s.success());
    let before = mountinfo();

    let mut c = Command::new(&bench);
    c.arg("launcher")
        .arg("--hako")
        .arg(&hako)
        .arg("--rootfs")
        .arg(fs.path())
        .args(["-n", "5", "--rounds", "2", "--pace-ms", "2", "--json"]);
    if floor_ok {
        c.arg("--floor").arg(&floor);
    }
    let out = c.output().expect("run hako-bench launcher");
    assert!(out.status.success(), "{}", output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");

    let rows: Vec<(String, u64, f64)> = report["runtimes"]
        .as_array()
        .expect("runtimes")
        .iter()
        .map(|r| {
            (
                r["runtime"].as_str().unwrap_or("").to_owned(),
                r["n"].as_u64().unwrap_or(0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let notes = report["notes"].to_string();
    let mut expected = vec!["hako-launcher", "hako-launcher-b2b", "hako-run"];
    if floor_ok {
        expected.push("floor");
    }
    for rt in ["crun", "runc"] {
        let in_path = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(rt).is_file()));
        if in_path {
            expected.push(rt);
        }
    }
    for name in &expected {
        let row = rows.iter().find(|(n, _, _)| n == name);
        assert!(
            matches!(row, Some((_, 5, p50)) if *p50 > 0.0),
            "row {name}: {row:?} (all rows {rows:?}; notes {notes})"
        );
    }
    if rows.iter().any(|(n, _, _)| n == "crun") {
        assert!(
            report["ratios_p50"]["crun/hako-run"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0
        );
    }
    // The private mount namespace crun needed is gone: the host's mounts are unchanged.
    assert_eq!(
        mountinfo()
            .lines()
            .map(|l| l.split(' ').nth(4).unwrap_or(""))
            .collect::<Vec<_>>(),
        before
            .lines()
            .map(|l| l.split(' ').nth(4).unwrap_or(""))
            .collect::<Vec<_>>(),
        "mount points changed"
    );
}
