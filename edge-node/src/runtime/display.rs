//! One session's headless X display: an `Xvfb` at the session's size, the game's windows pinned
//! full-screen at its origin, and the player's input typed into it through XTest.
//!
//! By hand: `Xvfb -displayfd 1 -screen 0 1280x720x24 -nolisten tcp -noreset`, then
//! `DISPLAY=:N xdotool windowmove --sync WINDOW 0 0` and `DISPLAY=:N xdotool key Down`.

use super::keymap::XInput;
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::BufRead;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    self, ConfigureWindowAux, ConnectionExt as _, ImageFormat, MapState,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

/// A running `Xvfb` and a connection to it.
pub struct Display {
    number: u32,
    pid: u32,
    // Taken when the display is shut down.
    xvfb: std::sync::Mutex<Option<Child>>,
    conn: RustConnection,
    root: xproto::Window,
    width: u16,
    height: u16,
    keycodes: HashMap<u32, u8>,
}

impl std::fmt::Debug for Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Display")
            .field("number", &self.number)
            .field("pid", &self.pid)
            .finish()
    }
}

fn x_err(what: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Session {
        id: String::new(),
        reason: format!("X display: {what}: {e}"),
    }
}

impl Display {
    /// Starts an `Xvfb` at `width`×`height` on the first free display number and connects to it.
    pub fn start(width: u32, height: u32) -> Result<Self> {
        // The X server parses what the game sends: it runs unprivileged too.
        let mut argv = super::drop_privileges();
        argv.push("/usr/bin/Xvfb".into());
        let mut xvfb = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["-displayfd", "1", "-screen", "0"])
            .arg(format!("{width}x{height}x24"))
            .args(["-nolisten", "tcp", "-noreset", "-nocursor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group, so a Ctrl-C at the node's terminal reaches only the node.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::Unavailable(format!(
                    "cannot start Xvfb ({e}); install Debian's xvfb package (deploy/install-deps.sh)"
                ))
            })?;
        // -displayfd: Xvfb picks a free number and writes it once it accepts connections.
        let stdout = xvfb.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let number = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line.trim().parse::<u32>().ok(),
            Err(_) => None,
        };
        let Some(number) = number else {
            let _ = xvfb.kill();
            let _ = xvfb.wait();
            return Err(Error::Unavailable(
                "Xvfb did not report a display within 10 s".into(),
            ));
        };
        let name = format!(":{number}");
        let connected = x11rb::connect(Some(&name));
        let (conn, screen) = match connected {
            Ok(c) => c,
            Err(e) => {
                let _ = xvfb.kill();
                let _ = xvfb.wait();
                return Err(x_err("connect")(e.to_string()));
            }
        };
        let root = conn.setup().roots[screen].root;
        let mut display = Self {
            number,
            pid: xvfb.id(),
            xvfb: std::sync::Mutex::new(Some(xvfb)),
            conn,
            root,
            width: width as u16,
            height: height as u16,
            keycodes: HashMap::new(),
        };
        display.keycodes = display.read_keymap()?;
        Ok(display)
    }

    fn read_keymap(&self) -> Result<HashMap<u32, u8>> {
        let setup = self.conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let map = self
            .conn
            .get_keyboard_mapping(min, max - min + 1)
            .map_err(|e| x_err("keyboard mapping")(e.to_string()))?
            .reply()
            .map_err(|e| x_err("keyboard mapping")(e.to_string()))?;
        let per = usize::from(map.keysyms_per_keycode.max(1));
        let mut out = HashMap::new();
        for (i, syms) in map.keysyms.chunks(per).enumerate() {
            let code = min + i as u8;
            // The unshifted keysym types the key; keep the first keycode that has it.
            if let Some(&sym) = syms.first()
                && sym != 0
            {
                out.entry(sym).or_insert(code);
            }
        }
        Ok(out)
    }

    /// The display's name for `DISPLAY` (`:N`).
    pub fn name(&self) -> String {
        format!(":{}", self.number)
    }

    /// The display's Unix socket, to bind into a sandbox.
    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/.X11-unix/X{}", self.number))
    }

    /// The `Xvfb` process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops `Xvfb` and removes its lock and socket; later calls do nothing. Whoever still
    /// holds the display (an input path) finds its requests failing, which they tolerate.
    pub fn shut_down(&self) {
        let child = self.xvfb.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            super::process::terminate(&mut child, Duration::from_secs(2));
            // A killed Xvfb leaves its lock and socket behind; a clean one removes them itself.
            let _ = std::fs::remove_file(format!("/tmp/.X{}-lock", self.number));
            let _ = std::fs::remove_file(self.socket_path());
        }
    }

    /// Pins every mapped top-level window to the origin at the display's size and returns how
    /// many are mapped. Games choose their own position; without a window manager nobody moves
    /// them, so the node does.
    pub fn pin_windows(&self) -> Result<usize> {
        let err = |e: String| x_err("windows")(e);
        let tree = self
            .conn
            .query_tree(self.root)
            .map_err(|e| err(e.to_string()))?
            .reply()
            .map_err(|e| err(e.to_string()))?;
        let mut mapped = 0;
        for w in tree.children {
            let Ok(attrs) = self.conn.get_window_attributes(w).map(|c| c.reply()) else {
                continue;
            };
            let Ok(attrs) = attrs else { continue };
            if attrs.map_state != MapState::VIEWABLE || attrs.override_redirect {
                continue;
            }
            mapped += 1;
            let Ok(Ok(geo)) = self.conn.get_geometry(w).map(|c| c.reply()) else {
                continue;
            };
            if (geo.x, geo.y, geo.width, geo.height) != (0, 0, self.width, self.height) {
                let aux = ConfigureWindowAux::new()
                    .x(0)
                    .y(0)
                    .width(u32::from(self.width))
                    .height(u32::from(self.height))
                    .border_width(0);
                let _ = self.conn.configure_window(w, &aux);
            }
        }
        self.conn.flush().map_err(|e| err(e.to_string()))?;
        Ok(mapped)
    }

    /// True when some pixel of the screen is not black (a game drew its first frame).
    pub fn shows_picture(&self) -> Result<bool> {
        let err = |e: String| x_err("read screen")(e);
        let image = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                0,
                0,
                self.width,
                self.height,
                u32::MAX,
            )
            .map_err(|e| err(e.to_string()))?
            .reply()
            .map_err(|e| err(e.to_string()))?;
        Ok(image
            .data
            .chunks_exact(4)
            .step_by(7)
            .any(|p| p[0] > 8 || p[1] > 8 || p[2] > 8))
    }

    /// Types input into the display through XTest.
    pub fn inject(&self, inputs: &[XInput]) -> Result<()> {
        use x11rb::protocol::xproto::{
            BUTTON_PRESS_EVENT, BUTTON_RELEASE_EVENT, KEY_PRESS_EVENT, KEY_RELEASE_EVENT,
            MOTION_NOTIFY_EVENT,
        };
        let err = |e: String| x_err("input")(e);
        for i in inputs {
            let (kind, detail, x, y) = match *i {
                XInput::Key { keysym, down } => {
                    let Some(&code) = self.keycodes.get(&keysym) else {
                        continue;
                    };
                    let kind = if down {
                        KEY_PRESS_EVENT
                    } else {
                        KEY_RELEASE_EVENT
                    };
                    (kind, code, 0, 0)
                }
                XInput::Button { button, down } => {
                    let kind = if down {
                        BUTTON_PRESS_EVENT
                    } else {
                        BUTTON_RELEASE_EVENT
                    };
                    (kind, button, 0, 0)
                }
                XInput::MoveTo { x, y } => (MOTION_NOTIFY_EVENT, 0, x, y),
                // detail 1: relative motion.
                XInput::MoveBy { dx, dy } => (MOTION_NOTIFY_EVENT, 1, dx, dy),
            };
            self.conn
                .xtest_fake_input(kind, detail, 0, self.root, x, y, 0)
                .map_err(|e| err(e.to_string()))?;
        }
        self.conn.flush().map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.shut_down();
    }
}
