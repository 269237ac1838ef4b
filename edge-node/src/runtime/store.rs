//! The node's installed game packages: `<games dir>/<id>/` holds one version of a game (its
//! files under `package/`, and `install.json` with its manifest's id, version, the package's
//! content digest and where it came from).
//!
//! A package is a directory with a [`MANIFEST_FILE`] at its top, or a `.tar` / `.tar.gz` of one
//! (from a path or an HTTP(S) URL; a URL needs the archive's SHA-256, checked before anything is
//! unpacked). Nothing a package holds can be written outside its own directory: paths with `..`
//! or a leading `/` and links pointing out of the package are refused.

use super::manifest::{MANIFEST_FILE, Manifest};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// What `install.json` records of an installed package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// Game id.
    pub id: String,
    /// Game version.
    pub version: String,
    /// Display name.
    pub name: String,
    /// SHA-256 over the package's files (paths, kinds and contents, in path order), hex.
    pub content_sha256: String,
    /// Where it was installed from.
    pub source: String,
    /// When, Unix seconds.
    pub installed_unix_s: u64,
}

/// An installed game: its checked manifest and where its files are.
#[derive(Debug, Clone)]
pub struct InstalledGame {
    /// The manifest.
    pub manifest: Manifest,
    /// The package directory (the manifest's relative paths start here).
    pub dir: PathBuf,
    /// The install record.
    pub record: InstallRecord,
}

impl InstalledGame {
    /// The program to run: absolute as written, or inside the package.
    pub fn executable(&self) -> PathBuf {
        let exe = &self.manifest.run.executable;
        if exe.starts_with('/') {
            PathBuf::from(exe)
        } else {
            self.dir.join(exe)
        }
    }

    /// The directory the game starts in.
    pub fn working_dir(&self) -> PathBuf {
        self.dir.join(&self.manifest.run.working_dir)
    }
}

/// The games directory; see the module docs.
#[derive(Debug, Clone)]
pub struct GameStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn package_error(source: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid("package", format!("{source}: {reason}"))
}

impl GameStore {
    /// A store rooted at `root` (created when missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        // Absolute: the sandbox binds these paths as they are.
        let root = std::path::absolute(&root).map_err(io(&root))?;
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(Self { root })
    }

    /// The games directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every installed game, by id. A damaged entry is skipped with a warning.
    pub fn list(&self) -> Result<Vec<InstalledGame>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(io(&self.root))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.')
                || !dir.join("install.json").is_file()
            {
                continue;
            }
            match Self::load(&dir) {
                Ok(g) => out.push(g),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "skipping a damaged game")
                }
            }
        }
        out.sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
        Ok(out)
    }

    fn load(dir: &Path) -> Result<InstalledGame> {
        let record_path = dir.join("install.json");
        let text = std::fs::read_to_string(&record_path).map_err(io(&record_path))?;
        let record: InstallRecord = serde_json::from_str(&text)
            .map_err(|e| package_error(&record_path.display().to_string(), e))?;
        let package = dir.join("package");
        let manifest = read_manifest(&package)?;
        Ok(InstalledGame {
            manifest,
            dir: package,
            record,
        })
    }

    /// Removes a game; false when it was not installed.
    pub fn remove(&self, id: &str) -> Result<bool> {
        super::manifest::check_id(id).map_err(|r| Error::invalid("game", r))?;
        let dir = self.root.join(id);
        if !dir.exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        Ok(true)
    }

    /// Installs a package from a directory, a tarball path, or an `http(s)://` URL of a tarball.
    /// `sha256` (hex) is checked against a tarball before it is unpacked; a URL requires it. An
    /// installed game of the same id is replaced once the new one is complete.
    pub fn add(&self, source: &str, sha256: Option<&str>) -> Result<InstalledGame> {
        let staging = tempfile_dir(&self.root)?;
        let result = self.add_into(source, sha256, &staging);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn add_into(
        &self,
        source: &str,
        sha256: Option<&str>,
        staging: &Path,
    ) -> Result<InstalledGame> {
        let package = staging.join("package");
        std::fs::create_dir_all(&package).map_err(io(&package))?;
        if source.starts_with("http://") || source.starts_with("https://") {
            let want = sha256.ok_or_else(|| {
                Error::invalid(
                    "sha256",
                    "a package from a URL needs --sha256 HEX of the archive",
                )
            })?;
            let bytes = download(source)?;
            check_sha256(source, &bytes, want)?;
            unpack(source, &bytes, &package)?;
        } else {
            let path = Path::new(source);
            let meta = std::fs::metadata(path).map_err(io(path))?;
            if meta.is_dir() {
                copy_tree(path, &package, source)?;
            } else {
                let bytes = std::fs::read(path).map_err(io(path))?;
                if let Some(want) = sha256 {
                    check_sha256(source, &bytes, want)?;
                }
                unpack(source, &bytes, &package)?;
            }
        }
        links_stay_inside(&package, source)?;
        let manifest = read_manifest(&package)?;
        let game = InstalledGame {
            record: InstallRecord {
                id: manifest.id.clone(),
                version: manifest.version.clone(),
                name: manifest.name.clone(),
                content_sha256: content_digest(&package)?,
                source: source.to_owned(),
                installed_unix_s: pixelgrid_proto::clock::unix_ms() / 1000,
            },
            manifest,
            dir: package.clone(),
        };
        check_runnable(&game)?;
        let record_path = staging.join("install.json");
        let json = serde_json::to_string_pretty(&game.record).expect("serialisable");
        std::fs::write(&record_path, json).map_err(io(&record_path))?;
        let dest = self.root.join(&game.manifest.id);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
        }
        std::fs::rename(staging, &dest).map_err(io(&dest))?;
        Self::load(&dest)
    }
}

fn tempfile_dir(root: &Path) -> Result<PathBuf> {
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| Error::Unavailable(format!("no randomness: {e}")))?;
    let dir = root.join(format!(
        ".incoming-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    Ok(dir)
}

/// Largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Reads and checks `dir/pixelgrid-game.toml`; errors name the file, the field and what is allowed.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let not_there = |why: String| {
        package_error(
            &dir.display().to_string(),
            format!("no readable {MANIFEST_FILE} at its top ({why}); is this a game package?"),
        )
    };
    // A plain file of sane size: never a link to a secret, a device or a pipe.
    let meta = std::fs::symlink_metadata(&path).map_err(|e| not_there(e.to_string()))?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST_BYTES {
        return Err(not_there(format!(
            "it must be a regular file of at most {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| not_there(e.to_string()))?;
    Manifest::parse(&text)
        .map_err(|e| Error::invalid("manifest", format!("{}: {e}", path.display())))
}

fn check_runnable(game: &InstalledGame) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = game.executable();
    let ok = std::fs::metadata(&exe)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !ok {
        return Err(Error::invalid(
            "manifest",
            format!(
                "{}: field `run.executable`: {} is missing or not executable",
                game.dir.join(MANIFEST_FILE).display(),
                exe.display()
            ),
        ));
    }
    let wd = game.working_dir();
    if !wd.is_dir() {
        return Err(Error::invalid(
            "manifest",
            format!(
                "{}: field `run.working_dir`: {} is not a directory of the package",
                game.dir.join(MANIFEST_FILE).display(),
                wd.display()
            ),
        ));
    }
    Ok(())
}

fn check_sha256(source: &str, bytes: &[u8], want: &str) -> Result<()> {
    let got = hex(&Sha256::digest(bytes));
    if !got.eq_ignore_ascii_case(want.trim()) {
        return Err(package_error(
            source,
            format!("SHA-256 is {got}, not the {want} given; nothing was unpacked"),
        ));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Largest package accepted, compressed or not.
const MAX_PACKAGE_BYTES: u64 = 8 << 30;

fn download(url: &str) -> Result<Vec<u8>> {
    let response = ureq::get(url)
        .call()
        .map_err(|e| package_error(url, format!("download failed: {e}")))?;
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_PACKAGE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| package_error(url, format!("download failed: {e}")))?;
    Ok(bytes)
}

// A link inside a package may point only at another place inside it.
fn link_stays_inside(link_rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link_rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

fn safe_relative(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn unpack(source: &str, bytes: &[u8], dest: &Path) -> Result<()> {
    let gz = bytes.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut archive = tar::Archive::new(reader.take(MAX_PACKAGE_BYTES));
    let entries = archive
        .entries()
        .map_err(|e| package_error(source, format!("not a tar archive: {e}")))?;
    let mut any = false;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| package_error(source, format!("not a tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| package_error(source, format!("bad path in archive: {e}")))?
            .into_owned();
        if !safe_relative(&path) {
            return Err(package_error(
                source,
                format!("{} would be written outside the package", path.display()),
            ));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name().ok().flatten().map(|t| t.into_owned());
            let inside = target.is_some_and(|t| {
                if kind.is_hard_link() {
                    safe_relative(&t)
                } else {
                    link_stays_inside(&path, &t)
                }
            });
            if !inside {
                return Err(package_error(
                    source,
                    format!("link {} points outside the package", path.display()),
                ));
            }
        } else if !(kind.is_file() || kind.is_dir()) {
            continue; // devices, fifos: a game package has no use for them
        }
        // unpack_in also refuses anything that would land outside `dest`.
        let written = entry
            .unpack_in(dest)
            .map_err(|e| package_error(source, format!("{}: {e}", path.display())))?;
        if !written {
            return Err(package_error(
                source,
                format!("{} would be written outside the package", path.display()),
            ));
        }
        any = true;
    }
    if !any {
        return Err(package_error(source, "not a tar archive, or an empty one"));
    }
    // A tarball of a single top directory holding the manifest: use that directory.
    if !dest.join(MANIFEST_FILE).exists() {
        let only: Vec<_> = std::fs::read_dir(dest)
            .map_err(io(dest))?
            .flatten()
            .collect();
        if let [one] = only.as_slice()
            && one.path().join(MANIFEST_FILE).is_file()
        {
            let inner = one.path();
            let tmp = dest.with_extension("inner");
            std::fs::rename(&inner, &tmp).map_err(io(&inner))?;
            std::fs::remove_dir(dest).map_err(io(dest))?;
            std::fs::rename(&tmp, dest).map_err(io(dest))?;
        }
    }
    Ok(())
}

/// Every link in the installed package, resolved, lands inside it (the lexical check on the
/// way in cannot see links through other links).
fn links_stay_inside(package: &Path, source: &str) -> Result<()> {
    let root = std::fs::canonicalize(package).map_err(io(package))?;
    fn walk(root: &Path, dir: &Path, source: &str) -> Result<()> {
        for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let path = e.path();
            let kind = e.file_type().map_err(io(&path))?;
            if kind.is_symlink() {
                let inside = std::fs::canonicalize(&path).is_ok_and(|t| t.starts_with(root));
                if !inside {
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    return Err(package_error(
                        source,
                        format!("link {} points outside the package", rel.display()),
                    ));
                }
            } else if kind.is_dir() {
                walk(root, &path, source)?;
            }
        }
        Ok(())
    }
    walk(&root, &root, source)
}

fn copy_tree(from: &Path, to: &Path, source: &str) -> Result<()> {
    fn walk(root: &Path, rel: &Path, to: &Path, source: &str) -> Result<()> {
        let dir = root.join(rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel = rel.join(e.file_name());
            let src = root.join(&rel);
            let dst = to.join(&rel);
            let kind = e.file_type().map_err(io(&src))?;
            if kind.is_symlink() {
                let target = std::fs::read_link(&src).map_err(io(&src))?;
                if !link_stays_inside(&rel, &target) {
                    return Err(package_error(
                        source,
                        format!("link {} points outside the package", rel.display()),
                    ));
                }
                std::os::unix::fs::symlink(&target, &dst).map_err(io(&dst))?;
            } else if kind.is_dir() {
                std::fs::create_dir_all(&dst).map_err(io(&dst))?;
                walk(root, &rel, to, source)?;
            } else if kind.is_file() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::copy(&src, &dst).map_err(io(&src))?;
                // No set-user-id or set-group-id files out of a studio's package.
                let mode = std::fs::metadata(&dst)
                    .map_err(io(&dst))?
                    .permissions()
                    .mode();
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode & 0o777))
                    .map_err(io(&dst))?;
            }
        }
        Ok(())
    }
    walk(from, Path::new(""), to, source)
}

/// SHA-256 over the package's entries in path order: path, kind, and content or link target.
pub fn content_digest(dir: &Path) -> Result<String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, std::fs::FileType)>) -> Result<()> {
        let dir = root.join(rel);
        for e in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let rel = rel.join(e.file_name());
            let kind = e.file_type().map_err(io(&dir))?;
            out.push((rel.clone(), kind));
            if kind.is_dir() {
                walk(root, &rel, out)?;
            }
        }
        Ok(())
    }
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (rel, kind) in entries {
        let path = dir.join(&rel);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        if kind.is_symlink() {
            h.update(b"l");
            h.update(
                std::fs::read_link(&path)
                    .map_err(io(&path))?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if kind.is_dir() {
            h.update(b"d");
        } else {
            h.update(b"f");
            let mut f = std::fs::File::open(&path).map_err(io(&path))?;
            let mut file_hash = Sha256::new();
            std::io::copy(&mut f, &mut file_hash).map_err(io(&path))?;
            h.update(file_hash.finalize());
        }
        h.update([0]);
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
id = "tiny"
name = "Tiny"
version = "1.0"
[run]
executable = "run.sh"
[video]
modes = ["640x480@30"]
"#;

    fn package(dir: &Path) {
        std::fs::write(dir.join(MANIFEST_FILE), MANIFEST).expect("write");
        let exe = dir.join("run.sh");
        std::fs::write(&exe, "#!/bin/sh\nexit 0\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn tarball(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().expect("tar")
    }

    fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        // set_path refuses "..", so write the name bytes directly as a hostile archive would.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, body).expect("append");
    }

    #[test]
    fn a_directory_installs_lists_and_removes() {
        let src = tempfile::tempdir().expect("tmp");
        package(src.path());
        let games = tempfile::tempdir().expect("tmp");
        let store = GameStore::open(games.path()).expect("store");
        let g = store
            .add(src.path().to_str().expect("utf8"), None)
            .expect("installed");
        assert_eq!(
            (g.manifest.id.as_str(), g.record.version.as_str()),
            ("tiny", "1.0")
        );
        assert_eq!(g.record.content_sha256.len(), 64);
        assert_eq!(store.list().expect("list").len(), 1);
        assert!(store.remove("tiny").expect("remove"));
        assert!(store.list().expect("list").is_empty());
        assert!(!store.remove("tiny").expect("remove"));
    }

    #[test]
    fn a_tarball_is_checked_before_it_is_unpacked() {
        let tar = tarball(|b| {
            append(b, "pixelgrid-game.toml", MANIFEST.as_bytes(), 0o644);
            append(b, "run.sh", b"#!/bin/sh\n", 0o755);
        });
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tiny.tar");
        std::fs::write(&path, &tar).expect("write");
        let store = GameStore::open(dir.path().join("games")).expect("store");
        let p = path.to_str().expect("utf8");
        let e = store
            .add(p, Some(&"0".repeat(64)))
            .expect_err("wrong digest");
        assert!(e.to_string().contains("nothing was unpacked"), "{e}");
        assert!(store.list().expect("list").is_empty());
        let right = hex(&Sha256::digest(&tar));
        store.add(p, Some(&right)).expect("installed");
    }

    #[test]
    fn archives_cannot_write_outside_the_package() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = GameStore::open(dir.path().join("games")).expect("store");
        for (name, tar) in [
            (
                "dotdot",
                tarball(|b| append(b, "../../escaped", b"x", 0o644)),
            ),
            (
                "absolute",
                tarball(|b| append(b, "/tmp/escaped-abs", b"x", 0o644)),
            ),
            (
                "symlink",
                tarball(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    h.set_path("evil").expect("path");
                    h.set_link_name("../../../etc").expect("link");
                    h.set_cksum();
                    b.append(&h, &[][..]).expect("append");
                }),
            ),
        ] {
            let path = dir.path().join(format!("{name}.tar"));
            std::fs::write(&path, &tar).expect("write");
            let e = store
                .add(path.to_str().expect("utf8"), None)
                .expect_err(name);
            assert!(e.to_string().contains("outside the package"), "{name}: {e}");
        }
        assert!(!dir.path().join("escaped").exists());
        assert!(!Path::new("/tmp/escaped-abs").exists());
    }

    #[test]
    fn not_a_package_and_a_missing_executable_say_so() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = GameStore::open(dir.path().join("games")).expect("store");
        let junk = dir.path().join("junk.tar");
        std::fs::write(&junk, b"this is not an archive at all").expect("write");
        let e = store
            .add(junk.to_str().expect("utf8"), None)
            .expect_err("junk");
        assert!(e.to_string().contains("tar"), "{e}");
        let empty = tempfile::tempdir().expect("tmp");
        let e = store
            .add(empty.path().to_str().expect("utf8"), None)
            .expect_err("empty");
        assert!(e.to_string().contains("is this a game package"), "{e}");
        let src = tempfile::tempdir().expect("tmp");
        std::fs::write(src.path().join(MANIFEST_FILE), MANIFEST).expect("write");
        let e = store
            .add(src.path().to_str().expect("utf8"), None)
            .expect_err("no exe");
        assert!(e.to_string().contains("run.executable"), "{e}");
    }

    #[test]
    fn links_through_links_cannot_leave_the_package() {
        let src = tempfile::tempdir().expect("tmp");
        package(src.path());
        // d -> . and d/d/d/x -> ../../../.. : lexically inside, really outside.
        std::os::unix::fs::symlink(".", src.path().join("d")).expect("link");
        std::os::unix::fs::symlink("../../../..", src.path().join("x")).expect("link");
        let games = tempfile::tempdir().expect("tmp");
        let store = GameStore::open(games.path()).expect("store");
        let e = store
            .add(src.path().to_str().expect("utf8"), None)
            .expect_err("escapes");
        assert!(e.to_string().contains("outside the package"), "{e}");
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn links_inside_the_package_are_allowed() {
        assert!(link_stays_inside(
            Path::new("lib/libfoo.so"),
            Path::new("libfoo.so.1")
        ));
        assert!(link_stays_inside(
            Path::new("bin/game"),
            Path::new("../lib/game")
        ));
        assert!(!link_stays_inside(
            Path::new("bin/game"),
            Path::new("../../x")
        ));
        assert!(!link_stays_inside(Path::new("x"), Path::new("/etc/passwd")));
    }
}
