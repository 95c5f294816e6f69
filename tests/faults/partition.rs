//! Partitions with iptables: DROP rules on the loopback interface cutting
//! one node's peer (QUIC) port off, tagged `palaver-fault-<pid>`, always
//! removed (when dropped, also on a panic) and swept after a killed run.
//! Knows iptables, not nodes or clusters.

use std::process::Command;
use std::process::Stdio;

use anyhow::Context;
use anyhow::Result;

/// Why partitions cannot be made here, if they cannot.
pub fn partition_unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").stdin(Stdio::null()).output();
    match uid {
        Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == "0" => {}
        Ok(out) => return Some(format!("not root (uid {})", String::from_utf8_lossy(&out.stdout).trim())),
        Err(e) => return Some(format!("cannot run `id -u`: {e}")),
    }
    match Command::new("iptables").args(["-w", "-S", "INPUT"]).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`iptables -S INPUT` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Some(format!("no usable iptables: {e}")),
    }
}

/// DROP rules cutting one node's peer port off; removed when dropped.
pub struct Partition {
    tag: String,
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// The comment on this run's rules.
    pub fn tag() -> String {
        format!("palaver-fault-{}", std::process::id())
    }

    /// Drops UDP to and from `port` on the loopback interface.
    pub fn cut(port: u16) -> Result<Partition> {
        let tag = Partition::tag();
        let mut p = Partition { tag: tag.clone(), rules: Vec::new() };
        for dir in ["--dport", "--sport"] {
            let rule: Vec<String> = [
                "INPUT",
                "-p",
                "udp",
                "-i",
                "lo",
                dir,
                &port.to_string(),
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut args = vec!["-w".to_string(), "-I".to_string()];
            args.extend(rule.iter().cloned());
            let out = Command::new("iptables").args(&args).stdin(Stdio::null()).output().context("running iptables")?;
            anyhow::ensure!(
                out.status.success(),
                "iptables {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            p.rules.push(rule);
        }
        Ok(p)
    }

    /// Removes the rules; answers what could not be removed.
    pub fn heal(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        for rule in self.rules.drain(..) {
            let mut args = vec!["-w".to_string(), "-D".to_string()];
            args.extend(rule);
            match Command::new("iptables").args(&args).stdin(Stdio::null()).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => failed.push(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
                Err(e) => failed.push(format!("{}: {e}", args.join(" "))),
            }
        }
        sweep_rules(&self.tag);
        anyhow::ensure!(failed.is_empty(), "iptables rules not removed: {failed:?}");
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("PARTITION CLEANUP: {e:#}");
        }
    }
}

/// Deletes every INPUT rule commented exactly `tag` (bounded: at most 64 rules).
pub fn sweep_rules(tag: &str) {
    sweep_rules_where(|t| t == tag);
}

/// Deletes the rules left by fault suites whose process is gone (Linux: a
/// pid without `/proc/<pid>`), say after a run was killed.
pub fn sweep_orphan_rules() {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    sweep_rules_where(|t| {
        t.strip_prefix("palaver-fault-")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
}

/// Deletes every INPUT rule with a word matching `pick` (bounded: 64 rules).
fn sweep_rules_where(pick: impl Fn(&str) -> bool) {
    for _ in 0..64 {
        let Ok(out) = Command::new("iptables").args(["-w", "-S", "INPUT"]).stdin(Stdio::null()).output() else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some(line) = text.lines().find(|l| l.starts_with("-A ") && l.split_whitespace().any(&pick)) else {
            return;
        };
        let args: Vec<&str> = line.trim_start_matches("-A ").split_whitespace().collect();
        let ok = Command::new("iptables")
            .args(["-w", "-D"])
            .args(&args)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("PARTITION CLEANUP: could not delete `{line}`");
            return;
        }
    }
}
