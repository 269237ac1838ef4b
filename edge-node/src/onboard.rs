//! `edge-node onboard`: the self-check a data centre runs before a machine joins the grid. Each
//! check says what it found and, when it fails, what to do. The report is a table for people
//! and JSON for fleet tooling; the hardware fingerprint (GPU + CPU + MAC addresses, hashed) tells
//! a changed machine from the one that was onboarded.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// What was found.
    pub found: String,
    /// What to do when it failed.
    pub advice: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn pass(name: &str, found: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            found: found.into(),
            advice: None,
        }
    }

    /// A failed check with its remedy.
    pub fn fail(name: &str, found: impl Into<String>, advice: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            found: found.into(),
            advice: Some(advice.into()),
        }
    }
}

/// Everything `onboard` found.
#[derive(Debug, Clone, Serialize)]
pub struct OnboardReport {
    /// The node id (the identity key's public half, hex).
    pub node_id: String,
    /// Where the identity key is.
    pub identity: String,
    /// True when this run created the key.
    pub identity_created: bool,
    /// SHA-256 over GPU, CPU and MAC addresses.
    pub hardware_fingerprint: String,
    /// Encoded frames per second one session reaches, by mode ("1280x720", "1920x1080").
    pub encode_fps: Vec<(String, f64)>,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// The orchestrator that accepted the registration, if any.
    pub registered_with: Option<String>,
}

impl OnboardReport {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// A table a person reads.
    pub fn table(&self) -> String {
        let mut out = format!(
            "node {}\nidentity {} ({})\nhardware fingerprint {}\n\n",
            self.node_id,
            self.identity,
            if self.identity_created {
                "created now"
            } else {
                "existing"
            },
            self.hardware_fingerprint
        );
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            out += &format!(
                "{}  {:width$}  {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.found
            );
            if let Some(a) = &c.advice {
                out += &format!("      {:width$}  → {a}\n", "");
            }
        }
        out
    }
}

/// The hardware fingerprint: SHA-256 of the GPU, the CPU and the sorted MAC addresses, each on
/// its own line. The same machine gives the same value; a swapped GPU, CPU or NIC does not.
pub fn fingerprint(gpu: &str, cpu: &str, macs: &[String]) -> String {
    let mut macs: Vec<&str> = macs.iter().map(String::as_str).collect();
    macs.sort_unstable();
    let mut h = Sha256::new();
    h.update(format!("gpu={gpu}\ncpu={cpu}\n"));
    for m in macs {
        h.update(format!("mac={m}\n"));
    }
    pixelgrid_proto::token::hex(&h.finalize())
}

/// The CPU model and core count, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cores} cores")
}

/// Total memory, bytes, from `/proc/meminfo`.
pub fn memory_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })
}

/// MAC addresses of the machine's network interfaces (loopback and all-zero ones left out).
pub fn mac_addresses() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "lo")
        .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty() && a != "00:00:00:00:00:00")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_the_hardware_not_the_order_of_interfaces() {
        let a = fingerprint("H100", "EPYC", &["aa".into(), "bb".into()]);
        assert_eq!(a, fingerprint("H100", "EPYC", &["bb".into(), "aa".into()]));
        assert_ne!(a, fingerprint("H200", "EPYC", &["aa".into(), "bb".into()]));
        assert_ne!(a, fingerprint("H100", "EPYC", &["aa".into(), "cc".into()]));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn a_failed_check_fails_the_report_and_its_advice_is_shown() {
        let r = OnboardReport {
            node_id: "n".into(),
            identity: "node.key".into(),
            identity_created: true,
            hardware_fingerprint: "f".into(),
            encode_fps: vec![],
            checks: vec![
                Check::pass("vulkan", "lavapipe"),
                Check::fail("port 8080", "in use", "free the port or pass --listen"),
            ],
            registered_with: None,
        };
        assert!(!r.passed());
        let t = r.table();
        assert!(t.contains("FAIL  port 8080"), "{t}");
        assert!(t.contains("→ free the port or pass --listen"), "{t}");
    }
}
