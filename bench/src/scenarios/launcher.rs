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

fn oci_samples(runtime: &Path, bundle: &Bundle, n: usize) -> Result<Vec<f64>, LauncherError> {
    let mut out = Vec::with_capacity(n);
    let name = runtime
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for i in 0..n {
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
    /// Pause between two hako-launcher boots (0: only the back-to-back row).
    pub pace_ms: u64,
    /// cgroup mount root (normally `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
}

/// Runs the comparison. Missing or failing runtimes are skipped with a note.
pub fn run(spec: &LauncherSpec) -> LauncherReport {
    let mut runtimes = Vec::new();
    let mut notes = Vec::new();
    let rootfs = spec.rootfs.display().to_string();
    let n = spec.n.to_string();

    // (1) hako's launcher measured from inside: paced (as cold starts come), then back to
    // back (a boot storm of one app, where the helpers have no quiet to refill in).
    let mut rows = Vec::new();
    if spec.pace_ms > 0 {
        rows.push((
            "hako-launcher",
            spec.pace_ms,
            format!(
                "spawn to exit inside hako (bench-spawn), pooled cgroup, a boot every {} ms",
                spec.pace_ms
            ),
        ));
    }
    rows.push((
        if spec.pace_ms > 0 {
            "hako-launcher-b2b"
        } else {
            "hako-launcher"
        },
        0,
        "spawn to exit inside hako (bench-spawn), pooled cgroup if ready, back to back".to_owned(),
    ));
    for (name, pace, measures) in rows {
        let mut c = Command::new(&spec.hako);
        let pace = pace.to_string();
        c.args([
            "bench-spawn",
            "--rootfs",
            &rootfs,
            "-n",
            &n,
            "--interval-ms",
            &pace,
        ]);
        match timed(c) {
            Ok((_, stdout)) => match parse_bench_spawn(&stdout) {
                Some(ms) if !ms.is_empty() => runtimes.push(result(name, &measures, ms)),
                _ => notes.push(format!(
                    "{name} skipped: no samples_us line in bench-spawn output {:?}",
                    stdout.chars().take(200).collect::<String>()
                )),
            },
            Err(e) => notes.push(format!("{name} skipped: {e}")),
        }
    }

    // (2) `hako run`, whole process.
    let mut ms = Vec::new();
    for _ in 0..spec.n {
        let mut c = Command::new(&spec.hako);
        c.args(["run", "--rootfs", &rootfs, "--", "/bin/true"]);
        match timed(c) {
            Ok((t, _)) => ms.push(t),
            Err(e) => {
                notes.push(format!("hako-run skipped: {e}"));
                ms.clear();
                break;
            }
        }
    }
    if !ms.is_empty() {
        runtimes.push(result("hako-run", "whole process", ms));
    }

    // (3), (4) crun and runc with an OCI bundle.
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
    if let Some(b) = &bundle {
        for name in ["crun", "runc"] {
            let Some(path) = which(name) else {
                notes.push(format!("{name} skipped: not installed"));
                continue;
            };
            let unshare = name == "crun" && crun_needs_unshare(&spec.cgroup_root);
            let samples = if unshare {
                without_unified_mount(&spec.cgroup_root.join("unified"), || {
                    oci_samples(&path, b, spec.n)
                })
            } else {
                oci_samples(&path, b, spec.n)
            };
            match samples {
                Ok(ms) => {
                    let how = if unshare {
                        "whole process (from a private mount namespace without the v2 mount, set up once)"
                    } else {
                        "whole process"
                    };
                    runtimes.push(result(name, how, ms));
                }
                Err(e) => notes.push(format!("{name} skipped: {e}")),
            }
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
        for base in ["hako-run", "hako-launcher", "hako-launcher-b2b"] {
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
            result("crun", "", vec![8.0]),
        ];
        let m = ratios(&rs);
        assert_eq!(m["crun/hako-run"], 4.0);
        assert_eq!(m["crun/hako-launcher"], 8.0);
        assert_eq!(m["crun/hako-launcher-b2b"], 2.0);
        assert!(!m.contains_key("runc/hako-run"));
    }
}
