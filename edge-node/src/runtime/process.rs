//! Stopping what a session started, by process group, and saying how a process ended.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Sends `signal` to the process group led by `child` (started with `process_group(0)`), waits
/// up to `grace` for it to exit, then kills the whole group. Reaps the child.
pub fn terminate_with(child: &mut Child, signal: Signal, grace: Duration) {
    let pgid = Pid::from_raw(child.id() as i32);
    if matches!(child.try_wait(), Ok(None)) {
        let _ = killpg(pgid, signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Whatever of the group is left (a forked helper, a child that ignored the signal).
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// [`terminate_with`] SIGTERM.
pub fn terminate(child: &mut Child, grace: Duration) {
    terminate_with(child, Signal::SIGTERM, grace);
}

/// Kills a process group left by an earlier run of the node (its leader's pid recorded on disk).
/// Only groups whose leader still runs `expected` (by executable name) are touched, so a
/// recycled pid is never killed.
pub fn kill_leftover_group(pid: i32, expected: &[&str]) -> bool {
    if pid <= 1 {
        return false;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !expected.iter().any(|e| comm.trim() == *e) {
        return false;
    }
    killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
}

/// How a process ended, for a player or an operator: "exited with code 3", "killed by SIGSEGV".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(sig) => format!("was killed by {sig}"),
        None => "ended".into(),
    }
}

/// The signal a manifest's stop signal names.
pub fn signal_for(stop: super::manifest::StopSignal) -> Signal {
    use super::manifest::StopSignal;
    match stop {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Int => Signal::SIGINT,
        StopSignal::Hup => Signal::SIGHUP,
        StopSignal::Quit => Signal::SIGQUIT,
    }
}
