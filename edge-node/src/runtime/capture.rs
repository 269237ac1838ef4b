//! Capturing a session's display: the X server copies the screen into shared memory (MIT-SHM,
//! a memfd we map) on each of the session's frame ticks, through `x11rb`.
//!
//! Chosen over GStreamer's `ximagesrc` (also XShm): `ximagesrc` talks to the display through
//! Xlib, whose I/O error handler ends the whole process when a display dies — one crashed
//! session's `Xvfb` would take the node and every other session with it. Here a dead display
//! is an error of that session only. Without MIT-SHM (a remote display) it falls back to a
//! plain `GetImage`, which copies the picture through the socket. Figures in README.md.

// One `mmap` of the shared segment; see `map_segment`.
#![allow(unsafe_code)]

use crate::{Error, Result};
use std::os::fd::OwnedFd;
use x11rb::connection::Connection;
use x11rb::protocol::shm::ConnectionExt as _;
use x11rb::protocol::xproto::{self, ConnectionExt as _, ImageFormat};
use x11rb::rust_connection::RustConnection;

/// A running capture of one display.
pub struct Capture {
    conn: RustConnection,
    root: xproto::Window,
    width: u16,
    height: u16,
    shm: Option<Segment>,
    // The GetImage fallback's last picture.
    copied: Vec<u8>,
}

struct Segment {
    id: u32,
    map: memmap2::Mmap,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("shm", &self.shm.is_some())
            .finish()
    }
}

fn capture_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("display capture: {what}: {e}"))
}

impl Capture {
    /// Connects to `display` (`:N`) to capture its `width`×`height` screen.
    pub fn open(display: &str, width: u32, height: u32) -> Result<Self> {
        let (conn, screen) =
            x11rb::connect(Some(display)).map_err(|e| capture_err("connect", e))?;
        let root = conn.setup().roots[screen].root;
        let mut capture = Self {
            conn,
            root,
            width: width as u16,
            height: height as u16,
            shm: None,
            copied: Vec::new(),
        };
        match capture.attach_segment() {
            Ok(seg) => capture.shm = Some(seg),
            Err(e) => tracing::warn!(error = %e, "no MIT-SHM; capturing through GetImage"),
        }
        Ok(capture)
    }

    /// True when the X server copies into shared memory.
    pub fn uses_shm(&self) -> bool {
        self.shm.is_some()
    }

    fn attach_segment(&self) -> Result<Segment> {
        self.conn
            .shm_query_version()
            .map_err(|e| capture_err("MIT-SHM", e))?
            .reply()
            .map_err(|e| capture_err("MIT-SHM", e))?;
        let size = usize::from(self.width) * usize::from(self.height) * 4;
        let fd: OwnedFd = nix::sys::memfd::memfd_create(
            c"pixelgrid-capture",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| capture_err("memfd", e))?;
        let file = std::fs::File::from(fd);
        file.set_len(size as u64)
            .map_err(|e| capture_err("memfd", e))?;
        let map = map_segment(&file, size)?;
        let id = self
            .conn
            .generate_id()
            .map_err(|e| capture_err("MIT-SHM", e))?;
        let server_fd: OwnedFd = file
            .try_clone()
            .map_err(|e| capture_err("memfd", e))?
            .into();
        self.conn
            .shm_attach_fd(id, server_fd, false)
            .map_err(|e| capture_err("MIT-SHM", e))?
            .check()
            .map_err(|e| capture_err("MIT-SHM attach", e))?;
        Ok(Segment { id, map })
    }

    /// Copies the screen as it is now and returns it: BGRx rows of `width * 4` bytes, valid
    /// until the next grab.
    pub fn grab(&mut self) -> Result<&[u8]> {
        let (w, h) = (self.width, self.height);
        if let Some(seg) = &self.shm {
            self.conn
                .shm_get_image(
                    self.root,
                    0,
                    0,
                    w,
                    h,
                    u32::MAX,
                    ImageFormat::Z_PIXMAP.into(),
                    seg.id,
                    0,
                )
                .map_err(|e| capture_err("grab", e))?
                .reply()
                .map_err(|e| capture_err("grab", e))?;
            // The reply means the server finished writing; it writes again only on our request.
            return Ok(&seg.map[..]);
        }
        let image = self
            .conn
            .get_image(ImageFormat::Z_PIXMAP, self.root, 0, 0, w, h, u32::MAX)
            .map_err(|e| capture_err("grab", e))?
            .reply()
            .map_err(|e| capture_err("grab", e))?;
        self.copied = image.data;
        Ok(&self.copied)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(seg) = &self.shm {
            let _ = self.conn.shm_detach(seg.id);
            let _ = self.conn.flush();
        }
    }
}

fn map_segment(file: &std::fs::File, size: usize) -> Result<memmap2::Mmap> {
    // SAFETY: the memfd is ours, sized to `size` above and never truncated; the only other
    // writer is the X server, which writes into it only while serving a grab that `grab`
    // waits for before reading, so no Rust reference observes a concurrent write.
    unsafe { memmap2::MmapOptions::new().len(size).map(file) }.map_err(|e| capture_err("mmap", e))
}
