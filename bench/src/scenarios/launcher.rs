//! `launcher`: boot cost of hako's launcher compared with `hako run`, crun and runc, all
//! starting `/bin/true` in the same root filesystem.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

/// Errors of the launcher comparison.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// A command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: String,
        /// Its stderr (trimmed).
        stderr: String,
    },
    /// Output could not be understood.
    #[error("unexpected output of {cmd}: {reason}")]
    Output {
        /// The command line.
        cmd: String,
        /// Why.
        reason: String,
    },
    /// Bundle preparation failed.
    #[error("bundle {path}: {reason}")]
    Bundle {
        /// The bundle path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The private mount namespace crun needs on a hybrid host could not be set up or left.
    #[error("mount namespace without {path}: {op}: {source}")]
    MountNs {
        /// The step (`unshare`, `umount`, ...).
        op: &'static str,
        /// The unified mount point.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Samples of one runtime.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeResult {
    /// Runtime name: `hako-launcher`, `hako-run`, `crun`, `runc`.
    pub runtime: String,
    /// Number of samples.
    pub n: usize,
    /// Median (ms).
    pub p50_ms: f64,
    /// 90th percentile (ms).
    pub p90_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// What was timed.
    pub measures: String,
}

/// Report of `launcher`.
#[derive(Debug, Clone, Serialize)]
pub struct LauncherReport {
    /// Results of the runtimes that ran.
    pub runtimes: Vec<RuntimeResult>,
    /// p50 ratios, e.g. `crun/hako-run` (whole process vs whole process) and
    /// `crun/hako-launcher`.
    pub ratios_p50: BTreeMap<String, f64>,
    /// Runtimes skipped and why.
    pub notes: Vec<String>,
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarizes samples in milliseconds.
pub fn result(runtime: &str, measures: &str, mut ms: Vec<f64>) -> RuntimeResult {
    ms.sort_by(f64::total_cmp);
    RuntimeResult {
        runtime: runtime.to_string(),
        n: ms.len(),
        p50_ms: percentile(&ms, 0.50),
        p90_ms: percentile(&ms, 0.90),
        p99_ms: percentile(&ms, 0.99),
        measures: measures.to_string(),
    }
}

/// Parses the `hako bench-spawn` output: the line `{"runtime":..., "samples_us":[...]}`.
pub fn parse_bench_spawn(stdout: &str) -> Option<Vec<f64>> {
    stdout.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l.trim()).ok()?;
        let s = v.get("samples_us")?.as_array()?;
        s.iter().map(|x| x.as_f64().map(|us| us / 1000.0)).collect()
    })
}

/// Finds an executable in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether crun must run in a mount namespace without the v2 mount of a hybrid host:
/// `{cgroup_root}/unified` is a mountpoint and `{cgroup_root}/cgroup.controllers` is absent.
pub fn crun_needs_unshare(cgroup_root: &Path) -> bool {
    let unified = cgroup_root.join("unified");
    if cgroup_root.join("cgroup.controllers").exists() {
        return false;
    }
    match (std::fs::metadata(&unified), std::fs::metadata(cgroup_root)) {
        (Ok(u), Ok(p)) => u.is_dir() && u.dev() != p.dev(),
        _ => false,
    }
}

/// Edits a `runc spec` config: no terminal, `args`, read-only root at `rootfs`.
pub fn edit_config(
    config: &mut serde_json::Value,
    rootfs: &Path,
    args: &[&str],
) -> Result<(), String> {
    let process = config
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .ok_or("config.json has no process object")?;
    process.insert("terminal".into(), serde_json::Value::Bool(false));
    process.insert("args".into(), serde_json::json!(args));
    config["root"] = serde_json::json!({
        "path": rootfs.display().to_string(),
        "readonly": true,
    });
    Ok(())
}

fn cmd_line(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `c` to completion; returns wall time in ms and stdout.
fn timed(mut c: Command) -> Result<(f64, String), LauncherError> {
    let line = cmd_line(&c);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = c.output().map_err(|source| LauncherError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        return Err(LauncherError::Failed {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok((ms, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// An OCI bundle in a temporary directory, for crun and runc.
pub struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    /// Creates `config.json` with `runc spec` (or the given spec tool) and edits it.
    pub fn create(spec_tool: &Path, rootfs: &Path) -> Result<Self, LauncherError> {
        let dir = tempfile::Builder::new()
            .prefix("hako-bench-bundle-")
            .tempdir()
            .map_err(|e| LauncherError::Bundle {
                path: "tempdir".into(),
                reason: e.to_string(),
            })?;
        let mut c = Command::new(spec_tool);
        c.arg("spec").arg("--bundle").arg(dir.path());
        timed(c)?;
        let path = dir.path().join("config.json");
        let bad = |reason: String| LauncherError::Bundle {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let abs = rootfs
            .canonicalize()
            .map_err(|e| bad(format!("rootfs {}: {e}", rootfs.display())))?;
        edit_config(&mut v, &abs, &["/bin/true"]).map_err(bad)?;
        std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("json"))
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { dir })
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Deletes a container on drop (even if the run failed or panicked).
struct DeleteGuard<'a> {
    runtime: &'a Path,
    id: String,
}

impl Drop for DeleteGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.runtime)
            .args(["delete", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `n` samples of `runtime run` of the bundle; container ids `hako-bench-<pid>-<name>-<i>`
/// from `first` on.
fn oci_samples(
    runtime: &Path,
    bundle: &Bundle,
    first: usize,
    n: usize,
) -> Result<Vec<f64>, LauncherError> {
    let mut out = Vec::with_capacity(n);
    let name = runtime
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for i in first..first + n {
        let id = format!("hako-bench-{}-{name}-{i}", std::process::id());
        let _guard = DeleteGuard {
            runtime,
            id: id.clone(),
        };
        let mut c = Command::new(runtime);
        c.arg("run").arg("--bundle").arg(bundle.path()).arg(&id);
        out.push(timed(c)?.0);
    }
    Ok(out)
}

/// Runs `f` in a private mount namespace where `unified` (the nearly empty cgroup v2 mount of a
/// hybrid host, which makes crun refuse to start) is unmounted, then returns to the original
/// namespace. The switch happens once, outside every sample: a wrapper per sample (`unshare -m
/// sh -c 'umount ...; exec crun ...'`) would add about 3 ms of process starts to each crun
/// figure. Needs a single-threaded caller (`unshare(CLONE_NEWNS)` fails with EINVAL otherwise).
fn without_unified_mount<T>(
    unified: &Path,
    f: impl FnOnce() -> Result<T, LauncherError>,
) -> Result<T, LauncherError> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::sched::{setns, unshare, CloneFlags};
    let err = |op: &'static str| {
        let path = unified.display().to_string();
        move |e: nix::Error| LauncherError::MountNs {
            op,
            path,
            source: e.into(),
        }
    };
    let open = |what: &'static str| {
        std::fs::File::open(what).map_err(|source| LauncherError::MountNs {
            op: what,
            path: unified.display().to_string(),
            source,
        })
    };
    let original = open("/proc/self/ns/mnt")?;
    // `setns` back resets the working directory to `/`: return to this one afterwards.
    let cwd = open(".")?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(err("unshare"))?;
    let res = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("make / private"))
    .and_then(|()| umount2(unified, MntFlags::MNT_DETACH).map_err(err("umount")))
    .and_then(|()| f());
    // Back to the host's view even if the samples failed.
    setns(&original, CloneFlags::CLONE_NEWNS).map_err(err("setns back"))?;
    nix::unistd::fchdir(std::os::fd::AsRawFd::as_raw_fd(&cwd)).map_err(err("fchdir back"))?;
    res
}

/// Inputs of `launcher`.
#[derive(Debug, Clone)]
pub struct LauncherSpec {
    /// The `hako` binary.
    pub hako: PathBuf,
    /// Root filesystem with `/bin/true`.
    pub rootfs: PathBuf,
    /// Samples per runtime.
    pub n: usize,
    /// Rounds the samples are split into; each round takes its share of every runtime in
    /// turn, so a machine that drifts during the run skews all rows alike.
    pub rounds: usize,
    /// Pause between two hako-launcher boots (0: only the back-to-back row).
    pub pace_ms: u64,
    /// cgroup mount root (normally `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// A lower-bound program run as `FLOOR ROOTFS` (`bench/floor/floor.c`, built by the user),
    /// timed as a whole process: the row `floor`.
    pub floor: Option<PathBuf>,
}

/// One row being measured: its samples so far, or why it was dropped.
struct Row {
    name: &'static str,
    measures: String,
    samples: Vec<f64>,
    skipped: Option<String>,
}

impl Row {
    fn new(name: &'static str, measures: impl Into<String>) -> Row {
        Row {
            name,
            measures: measures.into(),
            samples: Vec::new(),
            skipped: None,
        }
    }

    /// Adds a round's samples, or drops the row for good on the first failure.
    fn add(&mut self, got: Result<Vec<f64>, String>) {
        if self.skipped.is_some() {
            return;
        }
        match got {
            Ok(ms) => self.samples.extend(ms),
            Err(e) => {
                self.skipped = Some(e);
                self.samples.clear();
            }
        }
    }
}

/// `n` runs of `cmd` as a whole process each.
fn process_samples(n: usize, mut cmd: impl FnMut() -> Command) -> Result<Vec<f64>, String> {
    (0..n)
        .map(|_| timed(cmd()).map(|(t, _)| t).map_err(|e| e.to_string()))
        .collect()
}

/// The sizes of `rounds` chunks of `n` samples (the first ones one larger when it does not
/// divide).
fn chunks(n: usize, rounds: usize) -> Vec<usize> {
    let rounds = rounds.clamp(1, n.max(1));
    (0..rounds)
        .map(|r| n / rounds + usize::from(r < n % rounds))
        .collect()
}

/// Runs the comparison. Missing or failing runtimes are skipped with a note.
pub fn run(spec: &LauncherSpec) -> LauncherReport {
    let rootfs = spec.rootfs.display().to_string();
    let mut notes = Vec::new();

    // (1) hako's launcher measured from inside: paced (as cold starts come), then back to
    // back (a boot storm of one app, where the helpers have no quiet to refill in).
    let mut launcher_rows = Vec::new();
    if spec.pace_ms > 0 {
        launcher_rows.push((
            Row::new(
                "hako-launcher",
                format!(
                    "spawn to exit inside hako (bench-spawn), pooled cgroup, a boot every {} ms",
                    spec.pace_ms
                ),
            ),
            spec.pace_ms,
        ));
    }
    launcher_rows.push((
        Row::new(
            if spec.pace_ms > 0 {
                "hako-launcher-b2b"
            } else {
                "hako-launcher"
            },
            "spawn to exit inside hako (bench-spawn), pooled cgroup if ready, back to back",
        ),
        0,
    ));
    // (2) `hako run` and (3) the floor, whole processes.
    let mut hako_run = Row::new("hako-run", "whole process");
    let mut floor = spec.floor.as_ref().map(|f| {
        Row::new(
            "floor",
            format!(
                "whole process: {} (plain C, no caps, no seccomp)",
                f.display()
            ),
        )
    });
    // (4), (5) crun and runc with an OCI bundle.
    let spec_tool = which("runc").or_else(|| which("crun"));
    let bundle = match spec_tool {
        Some(t) => match Bundle::create(&t, &spec.rootfs) {
            Ok(b) => Some(b),
            Err(e) => {
                notes.push(format!("crun/runc skipped: {e}"));
                None
            }
        },
        None => {
            notes.push("crun/runc skipped: neither is installed".into());
            None
        }
    };
    let mut oci = Vec::new();
    if bundle.is_some() {
        for name in ["crun", "runc"] {
            let Some(path) = which(name) else {
                notes.push(format!("{name} skipped: not installed"));
                continue;
            };
            let unshare = name == "crun" && crun_needs_unshare(&spec.cgroup_root);
            let how = if unshare {
                "whole process (from a private mount namespace without the v2 mount, entered once per round)"
            } else {
                "whole process"
            };
            oci.push((Row::new(name, how), path, unshare));
        }
    }

    let mut done = 0;
    for n in chunks(spec.n, spec.rounds) {
        let count = n.to_string();
        for (row, pace) in &mut launcher_rows {
            let mut c = Command::new(&spec.hako);
            let pace = pace.to_string();
            c.args([
                "bench-spawn",
                "--rootfs",
                &rootfs,
                "-n",
                &count,
                "--interval-ms",
                &pace,
            ]);
            row.add(match timed(c) {
                Ok((_, stdout)) => match parse_bench_spawn(&stdout) {
                    Some(ms) if !ms.is_empty() => Ok(ms),
                    _ => Err(format!(
                        "no samples_us line in bench-spawn output {:?}",
                        stdout.chars().take(200).collect::<String>()
                    )),
                },
                Err(e) => Err(e.to_string()),
            });
        }
        hako_run.add(process_samples(n, || {
            let mut c = Command::new(&spec.hako);
            c.args(["run", "--rootfs", &rootfs, "--", "/bin/true"]);
            c
        }));
        if let (Some(row), Some(bin)) = (&mut floor, &spec.floor) {
            row.add(process_samples(n, || {
                let mut c = Command::new(bin);
                c.arg(&spec.rootfs);
                c
            }));
        }
        if let Some(b) = &bundle {
            for (row, path, unshare) in &mut oci {
                let got = if *unshare {
                    without_unified_mount(&spec.cgroup_root.join("unified"), || {
                        oci_samples(path, b, done, n)
                    })
                } else {
                    oci_samples(path, b, done, n)
                };
                row.add(got.map_err(|e| e.to_string()));
            }
        }
        done += n;
    }

    let all = launcher_rows
        .into_iter()
        .map(|(r, _)| r)
        .chain([hako_run])
        .chain(floor)
        .chain(oci.into_iter().map(|(r, _, _)| r));
    let mut runtimes = Vec::new();
    for row in all {
        match row.skipped {
            Some(why) => notes.push(format!("{} skipped: {why}", row.name)),
            None if row.samples.is_empty() => {
                notes.push(format!("{} skipped: no samples", row.name))
            }
            None => runtimes.push(result(row.name, &row.measures, row.samples)),
        }
    }
    let ratios_p50 = ratios(&runtimes);
    LauncherReport {
        runtimes,
        ratios_p50,
        notes,
    }
}

/// p50 ratios of crun and runc against hako-run and hako-launcher.
pub fn ratios(rs: &[RuntimeResult]) -> BTreeMap<String, f64> {
    let get = |n: &str| rs.iter().find(|r| r.runtime == n).map(|r| r.p50_ms);
    let mut m = BTreeMap::new();
    for other in ["crun", "runc"] {
        for base in ["hako-run", "hako-launcher", "hako-launcher-b2b", "floor"] {
            if let (Some(o), Some(b)) = (get(other), get(base)) {
                if b > 0.0 {
                    m.insert(format!("{other}/{base}"), o / b);
                }
            }
        }
    }
    m
}

/// Text table.
pub fn to_text(r: &LauncherReport) -> String {
    let mut s = format!(
        "{:<17} {:>5} {:>10} {:>10} {:>10}  measures\n",
        "runtime", "n", "p50 ms", "p90 ms", "p99 ms"
    );
    for x in &r.runtimes {
        s.push_str(&format!(
            "{:<17} {:>5} {:>10.3} {:>10.3} {:>10.3}  {}\n",
            x.runtime, x.n, x.p50_ms, x.p90_ms, x.p99_ms, x.measures
        ));
    }
    for (k, v) in &r.ratios_p50 {
        s.push_str(&format!("p50 ratio {k}: {v:.2}x\n"));
    }
    for n in &r.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.9), 90.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        let r = result("x", "", vec![3.0, 1.0, 2.0]);
        assert_eq!((r.p50_ms, r.p99_ms, r.n), (2.0, 3.0, 3));
    }

    #[test]
    fn bench_spawn_line() {
        let out = "starting\n{\"runtime\":\"hako-launcher\",\"samples_us\":[1500,2500]}\n";
        assert_eq!(parse_bench_spawn(out), Some(vec![1.5, 2.5]));
        assert_eq!(parse_bench_spawn("nothing"), None);
        assert_eq!(parse_bench_spawn("{\"samples_us\":[\"x\"]}"), None);
    }

    #[test]
    fn config_edit() {
        let mut v = serde_json::json!({
            "process": {"terminal": true, "args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": false}
        });
        edit_config(&mut v, Path::new("/tmp/r"), &["/bin/true"]).unwrap();
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["process"]["args"], serde_json::json!(["/bin/true"]));
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["root"]["path"], "/tmp/r");
        assert_eq!(v["root"]["readonly"], true);
        assert!(edit_config(&mut serde_json::json!({}), Path::new("/"), &[]).is_err());
    }

    #[test]
    fn unshare_decision_on_fake_tree() {
        let d = tempfile::tempdir().unwrap();
        // unified is a plain directory (same device): no unshare.
        std::fs::create_dir(d.path().join("unified")).unwrap();
        assert!(!crun_needs_unshare(d.path()));
        // Pure v2: never.
        std::fs::write(d.path().join("cgroup.controllers"), "cpu").unwrap();
        assert!(!crun_needs_unshare(d.path()));
        assert!(!crun_needs_unshare(Path::new("/nonexistent")));
    }

    #[test]
    fn ratios_against_both_bases() {
        let rs = vec![
            result("hako-launcher", "", vec![1.0]),
            result("hako-launcher-b2b", "", vec![4.0]),
            result("hako-run", "", vec![2.0]),
            result("floor", "", vec![1.6]),
            result("crun", "", vec![8.0]),
        ];
        let m = ratios(&rs);
        assert_eq!(m["crun/hako-run"], 4.0);
        assert_eq!(m["crun/hako-launcher"], 8.0);
        assert_eq!(m["crun/hako-launcher-b2b"], 2.0);
        assert_eq!(m["crun/floor"], 5.0);
        assert!(!m.contains_key("runc/hako-run"));
    }

    #[test]
    fn rounds_split_every_sample_and_never_make_empty_ones() {
        assert_eq!(chunks(200, 5), vec![40; 5]);
        assert_eq!(chunks(7, 3), vec![3, 2, 2]);
        assert_eq!(chunks(2, 5), vec![1, 1]);
        assert_eq!(chunks(5, 1), vec![5]);
        for (n, r) in [(1, 1), (13, 4), (100, 7), (3, 9)] {
            let c = chunks(n, r);
            assert_eq!(c.iter().sum::<usize>(), n, "{n} in {r} rounds: {c:?}");
            assert!(c.iter().all(|&k| k > 0), "{c:?}");
        }
    }

    #[test]
    fn a_row_failing_in_any_round_is_dropped_with_its_reason() {
        let mut r = Row::new("crun", "whole process");
        r.add(Ok(vec![1.0, 2.0]));
        r.add(Err("crun failed".into()));
        r.add(Ok(vec![3.0]));
        assert!(r.samples.is_empty());
        assert_eq!(r.skipped.as_deref(), Some("crun failed"));
        let mut ok = Row::new("runc", "whole process");
        ok.add(Ok(vec![1.0]));
        ok.add(Ok(vec![2.0, 3.0]));
        assert_eq!(ok.samples, vec![1.0, 2.0, 3.0]);
    }
}
