//! The packaged-game runtime: a studio's unmodified build, run once per session in a private
//! world (its own headless display, home and runtime directories, sandbox and process group),
//! captured into the node's encoder chain and driven by the player's input.
//!
//! - [`manifest`] — the `pixelgrid-game.toml` format (pure).
//! - [`store`] — installing, listing and removing packages (`edge-node games ...`).
//! - [`keymap`] — player input → X11 keys and buttons (pure).
//! - [`display`] — `Xvfb`, window pinning and XTest.
//! - [`capture`] — the display's pictures through `ximagesrc`.
//! - [`World`] — everything one session of a packaged game holds, and takes down when dropped.
//!
//! The game runs as `nobody` (when the node is root) under `bubblewrap`: the file system
//! read-only, a fresh `/tmp`, its own home, no view of other sessions, of the node's key
//! directory or of other processes, and dies with the node. Its process group is signalled
//! with the manifest's stop signal, then killed after the grace period.

pub mod capture;
pub mod display;
pub mod keymap;
pub mod manifest;
pub mod process;
pub mod store;

use crate::video::VideoMode;
use crate::{Error, Result};
use display::Display;
use keymap::XInputMapper;
use manifest::ReadyWhen;
use pixelgrid_proto::input::InputEvent;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::InstalledGame;

/// The uid/gid games run as when the node runs as root (Debian's `nobody`/`nogroup`).
const UNPRIVILEGED: (u32, u32) = (65534, 65534);

/// How a node runs packaged games.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where each session's private directory is made (and swept of leftovers at start).
    pub session_root: PathBuf,
    /// Directories a game must not see (the node's key directory).
    pub hidden: Vec<PathBuf>,
}

impl RuntimeConfig {
    /// Makes the session root and removes what an earlier run of the node left there:
    /// processes still running (by the process groups it recorded) and directories.
    pub fn prepare(&self) -> Result<usize> {
        use std::os::unix::fs::PermissionsExt;
        let root = &self.session_root;
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        // Searchable by the unprivileged game user, listable by nobody else.
        let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711));
        let mut swept = 0;
        for entry in std::fs::read_dir(root)
            .map_err(|e| Error::io(root, e))?
            .flatten()
        {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            sweep_session_dir(&dir);
            swept += 1;
        }
        if swept > 0 {
            tracing::warn!(swept, root = %root.display(), "removed sessions an earlier run left behind");
        }
        Ok(swept)
    }
}

/// Checks that the unprivileged game user can reach `dir` (every directory above it searchable
/// by others), when games run as that user.
pub fn check_reachable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !running_as_root() {
        return Ok(());
    }
    let abs = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    for a in abs.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(a) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 && meta.uid() != UNPRIVILEGED.0 {
            return Err(Error::Unavailable(format!(
                "{} is not reachable by the unprivileged game user (uid {}): {} is not searchable by others; run `chmod o+x {}` or keep games and sessions elsewhere (e.g. /var/lib/pixelgrid)",
                abs.display(),
                UNPRIVILEGED.0,
                a.display(),
                a.display()
            )));
        }
    }
    Ok(())
}

fn sweep_session_dir(dir: &Path) {
    if let Ok(text) = std::fs::read_to_string(dir.join("pids")) {
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(kind), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let expected: &[&str] = match kind {
                "display" => &["Xvfb"],
                "audio" => &["pulseaudio"],
                _ => &["bwrap", "setpriv", "prlimit"],
            };
            process::kill_leftover_group(pid, expected);
            if kind == "display"
                && let Some(n) = parts
                    .next()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
                let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The player's input path into a packaged game: mapped to X11 and typed through XTest at once
/// (not on the next frame) by a thread of the session's own, so a display that answers slowly
/// (a game hogging its X server) never holds up the node's network tasks. Held keys are
/// remembered so they can be let go.
#[derive(Debug)]
pub struct GameInput {
    tx: std::sync::mpsc::SyncSender<Option<InputEvent>>,
}

/// Player events waiting for the display; more are dropped rather than queued without end.
const INPUT_QUEUE: usize = 256;

impl GameInput {
    fn start(display: Arc<Display>, mode: VideoMode) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<InputEvent>>(INPUT_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("game-input".into())
            .spawn(move || {
                let mut mapper = XInputMapper::default();
                // `None` lets go of everything held; the thread ends with the session.
                while let Ok(event) = rx.recv() {
                    let inputs = match event {
                        Some(e) => match mapper.map(&e, mode.width, mode.height) {
                            Ok(i) => i,
                            Err(why) => {
                                tracing::debug!(%why, "input not delivered");
                                continue;
                            }
                        },
                        None => mapper.release_all(),
                    };
                    if display.inject(&inputs).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no input thread; this session takes no input");
        }
        Self { tx }
    }

    /// Types one event into the game; refused when the game is not keeping up.
    pub fn send(&self, event: &InputEvent) -> Result<()> {
        self.tx
            .try_send(Some(event.clone()))
            .map_err(|_| Error::Unavailable("the game is not taking input fast enough".into()))
    }

    /// Lets go of every key and button still held.
    pub fn release_all(&self) {
        let _ = self.tx.try_send(None);
    }
}

/// How long a running session may make no progress before its game and display are killed.
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Kills a world whose session stopped making progress: a game that grabs the X server (or a
/// display that stops answering) would otherwise block the session's thread for ever, since X
/// requests have no timeout. Killing the display fails every request waiting on it.
#[derive(Debug)]
struct Watchdog {
    // Milliseconds since `origin` of the latest sign of progress.
    beat: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    origin: Instant,
}

impl Watchdog {
    fn start(display: Arc<Display>, game_pid: u32, first_deadline: Duration) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let origin = Instant::now();
        // Until the first beat, the game's own time limit (and some) applies.
        let beat = Arc::new(AtomicU64::new(
            (first_deadline.saturating_sub(STALL_LIMIT)).as_millis() as u64,
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, st) = (Arc::clone(&beat), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("world-watchdog".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let since = origin.elapsed().as_millis() as u64;
                    if since.saturating_sub(b.load(Ordering::Relaxed))
                        > STALL_LIMIT.as_millis() as u64
                    {
                        tracing::warn!(game_pid, "session stalled; killing its game and display");
                        let pgid = nix::unistd::Pid::from_raw(game_pid as i32);
                        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                        display.shut_down();
                        return;
                    }
                }
            })
            .ok();
        Self {
            beat,
            stop,
            thread,
            origin,
        }
    }

    fn beat(&self) {
        self.beat.store(
            self.origin.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One packaged-game session's private world; dropping it stops the game and removes it all.
#[derive(Debug)]
pub struct World {
    watchdog: Option<Watchdog>,
    dir: PathBuf,
    display: Arc<Display>,
    // The session's own PulseAudio server and its socket, for games with sound.
    pulse: Option<(Child, PathBuf)>,
    game: Child,
    game_name: String,
    stop: manifest::StopSignal,
    grace: Duration,
    input: Arc<GameInput>,
    started: Instant,
}

impl World {
    /// Builds the world for `game` at `mode` and waits until the game is ready (its manifest
    /// says how), failing with the reason if it exits or opens no window in time. Must run on
    /// the thread that owns the session for its whole life: the sandbox dies with that thread.
    pub fn start(
        config: &RuntimeConfig,
        game: &InstalledGame,
        mode: VideoMode,
        session_id: &str,
    ) -> Result<Self> {
        let m = &game.manifest;
        if !m.supports(mode) {
            return Err(Error::invalid(
                "mode",
                format!(
                    "{} plays in {}; {}x{}@{} is not one of them",
                    m.id,
                    m.modes
                        .iter()
                        .map(|v| format!("{}x{}@{}", v.width, v.height, v.fps))
                        .collect::<Vec<_>>()
                        .join(", "),
                    mode.width,
                    mode.height,
                    mode.fps
                ),
            ));
        }
        let dir = make_session_dir(&config.session_root, session_id)?;
        let display = match Display::start(mode.width, mode.height) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let display_number = display.name().trim_start_matches(':').to_owned();
        record_pid(&dir, "display", display.pid(), &display_number);
        let mut pulse = None;
        if m.audio {
            match start_pulse(&dir) {
                Ok(p) => {
                    record_pid(&dir, "audio", p.0.id(), "");
                    pulse = Some(p);
                }
                Err(e) => {
                    display.shut_down();
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        }
        let socket = pulse.as_ref().map(|(_, s)| s.clone());
        let game_child = match spawn_game(config, game, mode, &dir, &display, socket.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                if let Some((mut child, _)) = pulse {
                    process::terminate(&mut child, Duration::from_secs(1));
                }
                display.shut_down();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        record_pid(&dir, "game", game_child.id(), "");
        let input = Arc::new(GameInput::start(Arc::clone(&display), mode));
        let watchdog = Watchdog::start(
            Arc::clone(&display),
            game_child.id(),
            Duration::from_secs(u64::from(m.ready_timeout_s)) + STALL_LIMIT,
        );
        let mut world = Self {
            watchdog: Some(watchdog),
            dir,
            display,
            pulse,
            game: game_child,
            game_name: m.name.clone(),
            stop: m.stop_signal,
            grace: Duration::from_secs(u64::from(m.stop_grace_s)),
            input,
            started: Instant::now(),
        };
        world.wait_ready(m.ready, Duration::from_secs(u64::from(m.ready_timeout_s)))?;
        Ok(world)
    }

    fn wait_ready(&mut self, when: ReadyWhen, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(reason) = self.exited() {
                return Err(Error::GameFailed {
                    game: self.game_name.clone(),
                    reason: format!("{reason} before it was ready{}", self.last_output()),
                });
            }
            let windows = self.display.pin_windows()?;
            let ready = windows > 0
                && match when {
                    ReadyWhen::WindowMapped => true,
                    ReadyWhen::FirstFrame => self.display.shows_picture()?,
                };
            if ready {
                tracing::info!(
                    game = %self.game_name,
                    ready_ms = self.started.elapsed().as_millis() as u64,
                    "game ready"
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                let what = if windows == 0 {
                    "opened no window"
                } else {
                    "drew nothing"
                };
                return Err(Error::GameFailed {
                    game: self.game_name.clone(),
                    reason: format!("{what} within {} s{}", limit.as_secs(), self.last_output()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn last_output(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        // The last 4 KiB of the log the node itself opened for the game.
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("game.log")) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
            let mut bytes = Vec::new();
            let _ = f.take(4096).read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        if tail.is_empty() {
            String::new()
        } else {
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "; its last output: {}",
                tail.join(" | ").chars().take(400).collect::<String>()
            )
        }
    }

    /// Why the game is no longer running, if it is not ("exited with code 3").
    pub fn exited(&mut self) -> Option<String> {
        match self.game.try_wait() {
            Ok(Some(status)) => Some(process::describe_exit(status)),
            Ok(None) => None,
            Err(e) => Some(format!("could not be watched ({e})")),
        }
    }

    /// The session's PulseAudio server (`unix:/…/native`), when the game has sound.
    pub fn pulse_server(&self) -> Option<String> {
        self.pulse
            .as_ref()
            .map(|(_, socket)| format!("unix:{}", socket.display()))
    }

    /// The display's name (`:N`).
    pub fn display_name(&self) -> String {
        self.display.name()
    }

    /// Tells the watchdog the session is making progress.
    pub fn beat(&self) {
        if let Some(w) = &self.watchdog {
            w.beat();
        }
    }

    /// Keeps the game's windows pinned (a game may open new ones or move them).
    pub fn keep_windows_pinned(&self) {
        let _ = self.display.pin_windows();
    }

    /// The input path into the game.
    pub fn input(&self) -> &Arc<GameInput> {
        &self.input
    }

    /// The game's name.
    pub fn game_name(&self) -> &str {
        &self.game_name
    }
}

impl Drop for World {
    fn drop(&mut self) {
        drop(self.watchdog.take());
        process::terminate_with(&mut self.game, process::signal_for(self.stop), self.grace);
        if let Some((child, _)) = &mut self.pulse {
            process::terminate(child, Duration::from_secs(1));
        }
        // Now, not when the last holder of the display (the input path) lets go of it.
        self.display.shut_down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn record_pid(dir: &Path, kind: &str, pid: u32, extra: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pids"))
    {
        let _ = writeln!(f, "{kind} {pid} {extra}");
    }
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn make_session_dir(root: &Path, session_id: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let safe: String = session_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    let dir = root.join(if safe.is_empty() {
        "session".into()
    } else {
        safe
    });
    for sub in ["home", "run"] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    for p in [dir.clone(), dir.join("home"), dir.join("run")] {
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
        if running_as_root() {
            std::os::unix::fs::chown(&p, Some(UNPRIVILEGED.0), Some(UNPRIVILEGED.1))
                .map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(dir)
}

/// Starts the session's own PulseAudio server with one null sink, `game`, whose monitor the node
/// records; returns it with its socket once the socket exists.
fn start_pulse(dir: &Path) -> Result<(Child, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let base = dir.join("pulse");
    // The sound server runs as the unprivileged user too; its files are its own.
    for p in [base.clone(), base.join("home"), base.join("run")] {
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711));
        if running_as_root() {
            std::os::unix::fs::chown(&p, Some(UNPRIVILEGED.0), Some(UNPRIVILEGED.1))
                .map_err(|e| Error::io(&p, e))?;
        }
    }
    let socket = base.join("native");
    let log_path = dir.join("pulse.log");
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io(dir, e))?;
    let mut argv = drop_privileges();
    argv.extend(
        [
            "/usr/bin/pulseaudio",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "--disable-shm=yes",
            "-n",
            "--load=module-null-sink sink_name=game rate=48000 channels=2",
        ]
        .map(String::from),
    );
    argv.push(format!(
        "--load=module-native-protocol-unix socket={} auth-anonymous=1",
        socket.display()
    ));
    // Loaded above; the game (a client of this server) may load nothing more, nor stop it.
    argv.extend(["--disallow-module-loading", "--disallow-exit"].map(String::from));
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("HOME", base.join("home"))
        .env("XDG_RUNTIME_DIR", base.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot start PulseAudio for the game's sound ({e}); install Debian's pulseaudio (deploy/install-deps.sh)"
            ))
        })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        if Instant::now() >= deadline || !matches!(child.try_wait(), Ok(None)) {
            process::terminate(&mut child, Duration::from_millis(200));
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(Error::Unavailable(format!(
                "PulseAudio did not start for the game's sound: {}",
                log.lines().rev().take(2).collect::<Vec<_>>().join(" | ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, socket))
}

/// Helpers the node runs as root around the game: absolute paths, so nothing of the game's
/// environment can choose which program runs.
const PRLIMIT: &str = "/usr/bin/prlimit";
const SETPRIV: &str = "/usr/bin/setpriv";
const BWRAP: &str = "/usr/bin/bwrap";

/// `setpriv` arguments that drop to the unprivileged user, when the node is root.
pub(crate) fn drop_privileges() -> Vec<String> {
    if running_as_root() {
        vec![
            SETPRIV.into(),
            format!("--reuid={}", UNPRIVILEGED.0),
            format!("--regid={}", UNPRIVILEGED.1),
            "--clear-groups".into(),
        ]
    } else {
        Vec::new()
    }
}

fn spawn_game(
    config: &RuntimeConfig,
    game: &InstalledGame,
    mode: VideoMode,
    dir: &Path,
    display: &Display,
    pulse_socket: Option<&Path>,
) -> Result<Child> {
    let m = &game.manifest;
    let mut argv: Vec<String> = Vec::new();
    if m.memory_mb > 0 || m.cpu_s > 0 {
        argv.push(PRLIMIT.into());
        if m.memory_mb > 0 {
            argv.push(format!("--as={}", m.memory_mb << 20));
        }
        if m.cpu_s > 0 {
            argv.push(format!("--cpu={}", m.cpu_s));
        }
        argv.push("--".into());
    }
    argv.extend(drop_privileges());
    let p = |path: &Path| path.display().to_string();
    argv.extend(
        [
            BWRAP,
            "--die-with-parent",
            // Its own session: no TIOCSTI into a terminal the node was started from.
            "--new-session",
            "--unshare-all",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            // The game's environment is set inside the sandbox only, never on the helpers.
            "--clearenv",
        ]
        .map(String::from),
    );
    // GPUs, where the node has them, stay reachable for Vulkan/OpenGL.
    for gpu in gpu_devices() {
        argv.extend(["--dev-bind".into(), p(&gpu), p(&gpu)]);
    }
    for hidden in config.hidden.iter().filter(|h| h.is_dir()) {
        argv.extend(["--tmpfs".into(), p(hidden)]);
    }
    argv.extend(["--tmpfs".into(), p(&config.session_root)]);
    argv.extend(["--ro-bind".into(), p(&game.dir), p(&game.dir)]);
    // Only the game's own home and runtime directories: the session directory around them
    // (its log, pids, sound server) is the node's.
    for sub in ["home", "run"] {
        argv.extend(["--bind".into(), p(&dir.join(sub)), p(&dir.join(sub))]);
    }
    let socket = display.socket_path();
    argv.extend(["--bind".into(), p(&socket), p(&socket)]);
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games".into(),
        ),
        ("HOME".into(), p(&dir.join("home"))),
        ("XDG_RUNTIME_DIR".into(), p(&dir.join("run"))),
        ("DISPLAY".into(), display.name()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    if let Some(socket) = pulse_socket {
        argv.extend(["--bind".into(), p(socket), p(socket)]);
        env.push(("PULSE_SERVER".into(), format!("unix:{}", socket.display())));
    }
    // Which Vulkan driver to load is the node's choice (CI pins lavapipe).
    for (k, v) in std::env::vars() {
        if k == "VK_ICD_FILENAMES" || k.starts_with("__GLX_") || k.starts_with("NVIDIA_") {
            env.push((k, v));
        }
    }
    env.extend(m.run.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in env {
        argv.extend(["--setenv".into(), k, v]);
    }
    argv.extend(["--chdir".into(), p(&game.working_dir())]);
    argv.push("--".into());
    argv.push(p(&game.executable()));
    argv.extend(m.run.args_for(mode));

    // The log lives in the node's part of the session directory, out of the game's reach.
    let log = std::fs::File::create(dir.join("game.log")).map_err(|e| Error::io(dir, e))?;
    let log2 = log.try_clone().map_err(|e| Error::io(dir, e))?;
    Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .spawn()
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot start {} through {} ({e}); install bubblewrap (deploy/install-deps.sh)",
                m.name, argv[0]
            ))
        })
}

fn gpu_devices() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if Path::new("/dev/dri").is_dir() {
        out.push(PathBuf::from("/dev/dri"));
    }
    if let Ok(entries) = std::fs::read_dir("/dev") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("nvidia") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
