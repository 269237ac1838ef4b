//! The game manifest (`pixelgrid-game.toml`): what a studio writes once so any node can run its
//! build. Parsing and checking only; nothing here touches the file system beyond the text given.
//!
//! ```toml
//! id = "my-game"                 # [a-z0-9-], 1..=64, what players launch
//! name = "My Game"
//! version = "1.4.2"              # [A-Za-z0-9.+_-], 1..=32
//!
//! [run]
//! executable = "bin/my-game"     # relative to the package, or absolute (a system install)
//! args = ["--width", "{width}", "--height", "{height}"]   # {width} {height} {fps} filled in
//! working_dir = "."              # relative to the package
//! env = { SDL_VIDEODRIVER = "x11" }
//!
//! [video]
//! modes = ["1280x720@30", "1920x1080@60"]
//!
//! [audio]
//! enabled = true                 # the game plays sound (its own PulseAudio sink is captured)
//!
//! [input]
//! kinds = ["keyboard", "mouse", "gamepad"]
//!
//! [ready]
//! when = "window-mapped"         # or "first-frame": the window shows something not black
//! timeout_s = 30
//!
//! [stop]
//! signal = "SIGTERM"             # SIGTERM, SIGINT, SIGHUP or SIGQUIT
//! grace_s = 5                    # then SIGKILL
//!
//! [limits]                       # optional
//! memory_mb = 2048
//! cpu_s = 0                      # CPU seconds (0 = none)
//! ```

use crate::video::VideoMode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The file name a package carries at its top level.
pub const MANIFEST_FILE: &str = "pixelgrid-game.toml";

/// Environment variables the node sets for every game; a manifest may not override them.
const RESERVED_ENV: &[&str] = &[
    "DISPLAY",
    "HOME",
    "XDG_RUNTIME_DIR",
    "PULSE_SERVER",
    "PULSE_SINK",
    "PULSE_RUNTIME_PATH",
    "WAYLAND_DISPLAY",
    "LD_PRELOAD",
];

/// A manifest that could not be accepted: which field and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The field at fault (`video.modes[1]`), or `""` for a syntax error.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "field `{}`: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ManifestError {}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// How the node knows the game is ready to be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyWhen {
    /// A top-level window is mapped.
    WindowMapped,
    /// A mapped window shows something other than black.
    FirstFrame,
}

/// Kinds of input a game reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// Keys.
    Keyboard,
    /// Pointer, buttons, wheel.
    Mouse,
    /// Game controllers.
    Gamepad,
}

/// A signal a game may ask to be stopped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopSignal {
    /// Terminate.
    #[serde(rename = "SIGTERM")]
    Term,
    /// Interrupt.
    #[serde(rename = "SIGINT")]
    Int,
    /// Hang up.
    #[serde(rename = "SIGHUP")]
    Hup,
    /// Quit.
    #[serde(rename = "SIGQUIT")]
    Quit,
}

impl StopSignal {
    /// The signal's name as `kill -s` takes it.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "TERM",
            StopSignal::Int => "INT",
            StopSignal::Hup => "HUP",
            StopSignal::Quit => "QUIT",
        }
    }
}

/// A checked manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// What players launch.
    pub id: String,
    /// Shown to players.
    pub name: String,
    /// The build's version; placement matches it.
    pub version: String,
    /// How to start it.
    pub run: Run,
    /// Modes the game can be played in, in the manifest's order.
    pub modes: Vec<VideoMode>,
    /// The game plays sound.
    pub audio: bool,
    /// Input kinds it reads.
    pub input: Vec<InputKind>,
    /// When it is ready.
    pub ready: ReadyWhen,
    /// How long it may take to become ready, seconds.
    pub ready_timeout_s: u32,
    /// How to stop it.
    pub stop_signal: StopSignal,
    /// How long it has after the signal before SIGKILL, seconds.
    pub stop_grace_s: u32,
    /// Address-space limit in MiB (0 = none).
    pub memory_mb: u64,
    /// CPU-time limit in seconds (0 = none).
    pub cpu_s: u64,
}

/// How to start a game.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Relative to the package, or absolute.
    pub executable: String,
    /// Arguments, with `{width}`, `{height}` and `{fps}` still to fill in.
    pub args: Vec<String>,
    /// Relative to the package.
    pub working_dir: String,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
}

impl Run {
    /// The arguments for one session's mode.
    pub fn args_for(&self, mode: VideoMode) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                a.replace("{width}", &mode.width.to_string())
                    .replace("{height}", &mode.height.to_string())
                    .replace("{fps}", &mode.fps.to_string())
            })
            .collect()
    }
}

// The file as written; every section but [run] and [video] may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: String,
    name: String,
    version: String,
    run: RawRun,
    video: RawVideo,
    #[serde(default)]
    audio: RawAudio,
    #[serde(default)]
    input: RawInput,
    #[serde(default)]
    ready: RawReady,
    #[serde(default)]
    stop: RawStop,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    executable: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default = "dot")]
    working_dir: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

fn dot() -> String {
    ".".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVideo {
    modes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudio {
    #[serde(default)]
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    kinds: Vec<InputKind>,
}

impl Default for RawInput {
    fn default() -> Self {
        Self {
            kinds: vec![InputKind::Keyboard, InputKind::Mouse],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReady {
    #[serde(default = "window_mapped")]
    when: ReadyWhen,
    #[serde(default = "thirty")]
    timeout_s: u32,
}

fn window_mapped() -> ReadyWhen {
    ReadyWhen::WindowMapped
}
fn thirty() -> u32 {
    30
}

impl Default for RawReady {
    fn default() -> Self {
        Self {
            when: ReadyWhen::WindowMapped,
            timeout_s: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStop {
    #[serde(default = "sigterm")]
    signal: StopSignal,
    #[serde(default = "five")]
    grace_s: u32,
}

fn sigterm() -> StopSignal {
    StopSignal::Term
}
fn five() -> u32 {
    5
}

impl Default for RawStop {
    fn default() -> Self {
        Self {
            signal: StopSignal::Term,
            grace_s: 5,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    memory_mb: u64,
    #[serde(default)]
    cpu_s: u64,
}

/// Checks a game id: `[a-z0-9-]`, 1..=64 characters, not starting or ending with `-`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    ok.then_some(()).ok_or_else(|| {
        format!(
            "{:?} is not a game id; use 1 to 64 of a-z, 0-9 and '-' (not first or last)",
            truncate(id)
        )
    })
}

/// Checks a version: `[A-Za-z0-9.+_-]`, 1..=32 characters.
pub fn check_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        && !v.starts_with('.');
    ok.then_some(()).ok_or_else(|| {
        format!(
            "{:?} is not a version; use 1 to 32 of A-Z, a-z, 0-9, '.', '+', '_' and '-'",
            truncate(v)
        )
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Parses a mode written `WIDTHxHEIGHT@FPS`.
pub fn parse_mode(text: &str) -> Option<VideoMode> {
    let (size, fps) = text.split_once('@')?;
    let (w, h) = size.split_once('x')?;
    VideoMode::new(w.parse().ok()?, h.parse().ok()?, fps.parse().ok()?).ok()
}

fn relative_inside(path: &str) -> bool {
    let p = std::path::Path::new(path);
    !path.is_empty()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

impl Manifest {
    /// Parses and checks a manifest's text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            // toml's message names the key and the line; keep it on one line.
            bad(
                "",
                e.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })?;
        check_id(&raw.id).map_err(|r| bad("id", r))?;
        check_version(&raw.version).map_err(|r| bad("version", r))?;
        let name = raw.name.trim();
        if name.is_empty() || name.chars().count() > 80 || name.chars().any(char::is_control) {
            return Err(bad("name", "use 1 to 80 printable characters"));
        }
        let exe = &raw.run.executable;
        if exe.is_empty() || exe.contains('\0') {
            return Err(bad(
                "run.executable",
                "name the program: a path inside the package, or an absolute path",
            ));
        }
        if !exe.starts_with('/') && !relative_inside(exe) {
            return Err(bad(
                "run.executable",
                format!("{exe:?} leaves the package; use a path inside it, or an absolute path"),
            ));
        }
        if !relative_inside(&raw.run.working_dir) {
            return Err(bad(
                "run.working_dir",
                format!(
                    "{:?} leaves the package; use a path inside it (\".\" for its top)",
                    raw.run.working_dir
                ),
            ));
        }
        if raw.run.args.len() > 64 || raw.run.args.iter().any(|a| a.len() > 1024) {
            return Err(bad("run.args", "at most 64 arguments of 1024 bytes each"));
        }
        for (k, v) in &raw.run.env {
            let name_ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && !k.as_bytes()[0].is_ascii_digit();
            if !name_ok {
                return Err(bad(
                    format!("run.env.{k}"),
                    "variable names are A-Z, 0-9 and '_', not starting with a digit",
                ));
            }
            if RESERVED_ENV.contains(&k.as_str()) {
                return Err(bad(
                    format!("run.env.{k}"),
                    format!(
                        "the node sets {k} for each session; these are reserved: {}",
                        RESERVED_ENV.join(", ")
                    ),
                ));
            }
            if v.contains('\0') || v.len() > 4096 {
                return Err(bad(format!("run.env.{k}"), "at most 4096 bytes, no NUL"));
            }
        }
        if raw.video.modes.is_empty() {
            return Err(bad(
                "video.modes",
                "list at least one mode, e.g. [\"1280x720@30\"]",
            ));
        }
        let mut modes = Vec::new();
        for (i, m) in raw.video.modes.iter().enumerate() {
            let mode = parse_mode(m).ok_or_else(|| {
                bad(
                    format!("video.modes[{i}]"),
                    format!(
                        "{:?} is not a mode; write WIDTHxHEIGHT@FPS with even sizes 16..=4096 and fps 1..=240, e.g. \"1280x720@30\"",
                        truncate(m)
                    ),
                )
            })?;
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        if raw.input.kinds.is_empty() {
            return Err(bad(
                "input.kinds",
                "list the input the game reads: keyboard, mouse, gamepad",
            ));
        }
        let mut input = raw.input.kinds;
        input.sort();
        input.dedup();
        if !(1..=600).contains(&raw.ready.timeout_s) {
            return Err(bad("ready.timeout_s", "use 1 to 600 seconds"));
        }
        if raw.stop.grace_s > 60 {
            return Err(bad("stop.grace_s", "use 0 to 60 seconds"));
        }
        Ok(Self {
            id: raw.id,
            name: name.to_owned(),
            version: raw.version,
            run: Run {
                executable: raw.run.executable,
                args: raw.run.args,
                working_dir: raw.run.working_dir,
                env: raw.run.env,
            },
            modes,
            audio: raw.audio.enabled,
            input,
            ready: raw.ready.when,
            ready_timeout_s: raw.ready.timeout_s,
            stop_signal: raw.stop.signal,
            stop_grace_s: raw.stop.grace_s,
            memory_mb: raw.limits.memory_mb,
            cpu_s: raw.limits.cpu_s,
        })
    }

    /// True when the game can be played at `mode`.
    pub fn supports(&self, mode: VideoMode) -> bool {
        self.modes.contains(&mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "cube"
name = "Spinning Cube"
version = "1.2.3"
[run]
executable = "/usr/bin/true"
args = ["--width", "{width}", "--height", "{height}", "--fps={fps}"]
env = { SDL_VIDEODRIVER = "x11" }
[video]
modes = ["1280x720@30", "640x480@60"]
[audio]
enabled = true
[ready]
when = "first-frame"
timeout_s = 10
[stop]
signal = "SIGINT"
grace_s = 2
"#;

    #[test]
    fn a_full_manifest_parses_and_fills_in_the_mode() {
        let m = Manifest::parse(GOOD).expect("valid");
        assert_eq!((m.id.as_str(), m.version.as_str()), ("cube", "1.2.3"));
        assert_eq!(m.modes.len(), 2);
        assert!(m.audio);
        assert_eq!(m.ready, ReadyWhen::FirstFrame);
        assert_eq!(m.stop_signal, StopSignal::Int);
        assert_eq!(m.input, [InputKind::Keyboard, InputKind::Mouse]);
        let mode = VideoMode::new(640, 480, 60).expect("mode");
        assert!(m.supports(mode));
        assert_eq!(
            m.run.args_for(mode),
            ["--width", "640", "--height", "480", "--fps=60"]
        );
    }

    fn error_of(text: &str) -> ManifestError {
        Manifest::parse(text).expect_err("must be refused")
    }

    #[test]
    fn each_mistake_names_its_field_and_what_is_allowed() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "1280x720@30\", \"1281x720@30",
                "video.modes[1]",
                "WIDTHxHEIGHT@FPS",
                "",
            ),
            ("1280x720@30", "id", "a-z", "id = \"Cube\""),
            ("1280x720@30", "version", "version", "version = \"\""),
            (
                "1280x720@30",
                "run.executable",
                "leaves the package",
                "executable = \"../x\"",
            ),
            (
                "1280x720@30",
                "run.working_dir",
                "leaves",
                "working_dir = \"/etc\"",
            ),
            (
                "1280x720@30",
                "run.env.DISPLAY",
                "reserved",
                "env = { DISPLAY = \":0\" }",
            ),
            ("1280x720@30", "stop.grace_s", "0 to 60", "grace_s = 61"),
        ];
        for (modes, field, hint, edit) in cases {
            let mut text = GOOD.replace("1280x720@30\", \"640x480@60", modes);
            if !edit.is_empty() {
                let key = edit.split(" = ").next().unwrap_or_default();
                let line = text
                    .lines()
                    .find(|l| l.starts_with(&format!("{key} = ")))
                    .map(str::to_owned);
                text = match line {
                    Some(l) => text.replace(&l, edit),
                    None => text.replace("[run]\n", &format!("[run]\n{edit}\n")),
                };
            }
            let e = error_of(&text);
            assert_eq!(e.field, *field, "{e}");
            assert!(e.to_string().contains(hint), "{field}: {e}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_syntax_are_refused_with_the_key() {
        let e = error_of(&GOOD.replace("[audio]\n", "[audio]\nvolume = 3\n"));
        assert!(e.to_string().contains("volume"), "{e}");
        let e = error_of("id = ");
        assert!(!e.to_string().is_empty());
        let e = error_of(&GOOD.replace("SIGINT", "SIGKILL"));
        assert!(e.to_string().contains("SIGKILL"), "{e}");
    }

    #[test]
    fn ids_and_versions_are_checked() {
        assert!(check_id("super-tux2").is_ok());
        for id in ["", "-a", "a-", "A", "a b", &"x".repeat(65)] {
            assert!(check_id(id).is_err(), "{id}");
        }
        assert!(check_version("0.6.3+dfsg-2").is_ok());
        assert!(check_version("1 2").is_err() && check_version(".1").is_err());
    }
}
