//! Runs last (cargo runs test targets in name order): after the whole launcher suite, no test
//! cgroup, mount or process may remain.
mod common;

use common::*;

#[test]
fn nothing_is_left_behind() {
    if !is_root("leftovers") {
        return;
    }
    // One more full cycle, including a failure path, then look.
    let fs = Rootfs::build();
    let _ = sh(&fs, "sleep 0.01 & true");
    let mut spec = fs.spec("");
    spec.command = vec!["/bin/nope".into()];
    assert!(run(&spec, &hako_launcher::CgroupLimits::default()).is_err());
    let root_path = fs.path().to_owned();
    drop(fs);

    let cgroups = leftover_test_cgroups();
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    // The suite's own parent group goes too (tests running in parallel have all finished:
    // this target runs last).
    assert!(
        cgroup_root().remove_parent_if_empty().unwrap(),
        "the test parent cgroup {CGROUP_PARENT} is not empty"
    );
    for h in std::fs::read_dir(CGROUP_MOUNT).unwrap().flatten() {
        let p = h.path().join(CGROUP_PARENT);
        assert!(!p.exists(), "{} left behind", p.display());
    }
    let mounts = host_mounts_containing("hako");
    assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
    assert!(host_mounts_containing(root_path.to_str().unwrap()).is_empty());
    // No process of ours remains: no children at all (zombie or alive).
    let me = std::process::id().to_string();
    let mut children = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
            let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
            if after.split(' ').nth(1) == Some(me.as_str()) {
                children.push(e.file_name());
            }
        }
    }
    assert!(children.is_empty(), "processes left behind: {children:?}");
}
