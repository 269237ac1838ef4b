//! The deploy files stay true: the checkers data centres use accept them (hadolint,
//! kubernetes-validate, docker-compose, systemd-analyze), and every flag they pass to one of our
//! binaries exists in that binary's real `--help`.
//!
//! Convention the parser relies on (and checks): in YAML, `command:`, `args:` and `test:` are
//! one-line JSON arrays; Dockerfiles use exec-form `CMD [...]`; units use `ExecStart=`.

use std::path::{Path, PathBuf};
use std::process::Command;

const BINARIES: [(&str, &str); 3] = [
    ("edge-node", "edge-node"),
    ("orchestrator", "orchestrator"),
    ("indexer", "indexer"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {suffix} files in {dir}");
    v
}

/// A PyPI checker from deploy/install-deps.sh's venv, or from PATH.
fn tool(name: &str) -> PathBuf {
    let venv = Path::new("/opt/pixelgrid-tools/bin").join(name);
    if venv.exists() {
        return venv;
    }
    PathBuf::from(name)
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); run deploy/install-deps.sh"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The release-or-debug directory our binaries are built into, building them if needed.
fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (package, bin) in BINARIES {
        if !dir.join(bin).exists() {
            let mut c = Command::new(&cargo);
            c.current_dir(repo())
                .args(["build", "-p", package, "--bin", bin]);
            if dir.ends_with("release") {
                c.arg("--release");
            }
            run(&mut c, &format!("building {bin}"));
        }
    }
    dir
}

/// Every command line in a deploy file: `(file:line, words)`.
fn commands(path: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let t = line.trim();
        let json = ["command:", "args:", "test:", "CMD"]
            .iter()
            .find_map(|k| t.strip_prefix(k))
            .map(str::trim)
            .filter(|rest| rest.starts_with('['));
        if let Some(array) = json {
            let words: Vec<String> = serde_json::from_str(array)
                .unwrap_or_else(|e| panic!("{at}: not a one-line JSON array ({e}): {t}"));
            out.push((at, words));
        } else if let Some(exec) = t.strip_prefix("ExecStart=") {
            out.push((at, exec.split_whitespace().map(str::to_owned).collect()));
        } else if t.starts_with("command:") || t.starts_with("args:") {
            panic!("{at}: write commands as one-line JSON arrays: {t}");
        }
    }
    out
}

#[test]
fn every_flag_the_deploy_files_pass_exists_in_the_binary() {
    let bins = binaries_dir();
    let mut files = deploy_files("deploy/k8s", ".yaml");
    files.extend(deploy_files("deploy", ".yaml"));
    files.extend(deploy_files("deploy/systemd", ".service"));
    files.extend(deploy_files("deploy/docker", ".Dockerfile"));
    let mut checked = 0;
    let mut help_cache = std::collections::HashMap::new();
    for file in &files {
        for (at, words) in commands(file) {
            let Some(bin) = words.first().and_then(|w| {
                let name = w.rsplit('/').next().unwrap_or(w);
                BINARIES.iter().find(|(_, b)| *b == name).map(|(_, b)| *b)
            }) else {
                continue;
            };
            let sub = words
                .get(1)
                .filter(|w| !w.starts_with('-'))
                .cloned()
                .unwrap_or_default();
            let help = help_cache
                .entry((bin, sub.clone()))
                .or_insert_with(|| {
                    let mut c = Command::new(bins.join(bin));
                    if !sub.is_empty() {
                        c.arg(&sub);
                    }
                    let out = c.arg("--help").output().unwrap();
                    assert!(
                        out.status.success(),
                        "{at}: `{bin} {sub} --help` fails: is `{sub}` a subcommand?"
                    );
                    String::from_utf8_lossy(&out.stdout).into_owned()
                })
                .clone();
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                let known = help.match_indices(flag).any(|(i, _)| {
                    help[i + flag.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
                });
                assert!(known, "{at}: `{bin} {sub}` has no flag {flag}");
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} flags found: is the parser still reading the files?"
    );
}

#[test]
fn hadolint_accepts_the_dockerfiles() {
    for f in deploy_files("deploy/docker", ".Dockerfile") {
        run(
            Command::new(tool("hadolint")).arg(&f),
            &format!("hadolint {}", f.display()),
        );
    }
}

#[test]
fn kubernetes_validate_accepts_the_manifests_and_kustomize_lists_them_all() {
    let manifests: Vec<PathBuf> = deploy_files("deploy/k8s", ".yaml")
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    let kustomization =
        std::fs::read_to_string(repo().join("deploy/k8s/kustomization.yaml")).unwrap();
    for m in &manifests {
        let name = m.file_name().unwrap().to_string_lossy();
        assert!(
            kustomization.contains(&format!("- {name}")),
            "kustomization.yaml does not list {name}"
        );
        run(
            Command::new(tool("kubernetes-validate"))
                .args(["--strict", "--quiet"])
                .arg(m),
            &format!("kubernetes-validate {}", m.display()),
        );
    }
    let all = manifests
        .iter()
        .map(|m| std::fs::read_to_string(m).unwrap())
        .collect::<String>();
    for kind in [
        "kind: StatefulSet",
        "kind: Deployment",
        "kind: PodDisruptionBudget",
        "kind: DaemonSet",
        "kind: NetworkPolicy",
        "kind: Secret",
        "nvidia.com/gpu: 1",
        "readinessProbe",
        "livenessProbe",
    ] {
        assert!(all.contains(kind), "the manifests have no {kind}");
    }
}

#[test]
fn docker_compose_accepts_the_compose_files() {
    let deploy = repo().join("deploy");
    run(
        Command::new("docker-compose").current_dir(&deploy).args([
            "-f",
            "compose.yaml",
            "config",
            "-q",
        ]),
        "docker-compose config (compose.yaml)",
    );
    run(
        Command::new("docker-compose").current_dir(&deploy).args([
            "-f",
            "compose.yaml",
            "-f",
            "compose.gpu.yaml",
            "config",
            "-q",
        ]),
        "docker-compose config (with compose.gpu.yaml)",
    );
}

#[test]
fn systemd_analyze_accepts_the_units() {
    // The units name /usr/local/bin/…; verify them against the binaries just built.
    let bins = binaries_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for f in deploy_files("deploy/systemd", ".service") {
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let out = dir.path().join(f.file_name().unwrap());
        std::fs::write(&out, text).unwrap();
        units.push(out);
    }
    run(
        Command::new("systemd-analyze").arg("verify").args(&units),
        "systemd-analyze verify",
    );
}
