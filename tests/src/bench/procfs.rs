//! What the kernel says about a process: CPU time, peak memory, children,
//! threads and the open-file limit, all read from `/proc` (no libc, no unsafe).

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

/// Clock ticks per second for `utime`/`stime` (`getconf CLK_TCK`, usually 100).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU seconds of every thread of `pid`, live or exited.
#[must_use]
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    // After ")": state ppid … utime is field 14 of the line, index 11 here; stime index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// CPU seconds of each live thread of `pid`, by thread id, from
/// `/proc/PID/task/TID/schedstat` (nanoseconds on the CPU). Where that is not
/// readable, the whole process's [`cpu_seconds`] (10 ms ticks) under its pid.
///
/// Comparing two such maps thread by thread is exact except for a thread
/// that exits in between; `/proc/PID/stat` counts those too but only in
/// ticks, too coarse for a transfer of a few MiB.
#[must_use]
pub fn thread_cpu_seconds(pid: u32) -> HashMap<u32, f64> {
    let mut threads = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let ns = std::fs::read_to_string(entry.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()));
            match ns {
                Some(ns) => threads.insert(tid, ns as f64 / 1e9),
                None => return cpu_seconds(pid).map(|s| HashMap::from([(pid, s)])).unwrap_or_default(),
            };
        }
    }
    if threads.is_empty() {
        return cpu_seconds(pid).map(|s| HashMap::from([(pid, s)])).unwrap_or_default();
    }
    threads
}

/// CPU seconds used between two [`thread_cpu_seconds`] readings (merged over processes).
#[must_use]
pub fn cpu_used(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after.iter().map(|(tid, now)| (now - before.get(tid).copied().unwrap_or(0.0)).max(0.0)).sum()
}

/// `pid` and every process whose parent chain leads to it (sshd forks per connection).
#[must_use]
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = stat_fields(child).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok())) {
                children.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut all = vec![pid];
    let mut next = 0;
    while next < all.len() {
        if let Some(kids) = children.get(&all[next]) {
            all.extend(kids.iter().copied().filter(|k| !all.contains(k)).collect::<Vec<_>>());
        }
        next += 1;
    }
    all
}

/// A `kB` line of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident set size (`VmHWM`) in bytes.
#[must_use]
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Current resident set size (`VmRSS`) in bytes.
#[must_use]
pub fn rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// Resets `VmHWM` to the current RSS (`echo 5 > /proc/PID/clear_refs`), so a
/// later peak belongs to what ran in between. Needs to own the process (or root).
///
/// # Errors
/// The kernel refused the write.
pub fn reset_peak_rss(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// Whether the process still exists (and is not a zombie).
#[must_use]
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// How many threads `pid` runs (entries of `/proc/PID/task`).
#[must_use]
pub fn threads(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// This process's open-file limit, `(soft, hard)`, from `/proc/self/limits`.
#[must_use]
pub fn nofile_limit() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..]
        .split_whitespace()
        .map(|w| if w == "unlimited" { Some(u64::MAX) } else { w.parse().ok() });
    Some((numbers.next()??, numbers.next()??))
}

/// Raises this process's open-file limit to at least `wanted` (children
/// inherit it) with `prlimit`; as far as the hard limit allows otherwise.
/// Returns the soft limit in force afterwards.
#[must_use]
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    let Some((soft, hard)) = nofile_limit() else { return 0 };
    if soft >= wanted {
        return soft;
    }
    let pid = std::process::id().to_string();
    let set = |limit: u64| {
        Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={limit}:{limit}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // Root may raise the hard limit too; anyone may raise the soft one up to it.
    if !set(wanted.max(hard)) && hard > soft {
        let _ = set(hard);
    }
    nofile_limit().map_or(soft, |(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some_and(|s| s >= 0.0));
        let before = thread_cpu_seconds(me);
        assert!(!before.is_empty());
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(20) {}
        assert!(cpu_used(&before, &thread_cpu_seconds(me)) > 0.0);
        assert!(peak_rss(me).is_some_and(|b| b > 0));
        assert!(rss(me).is_some_and(|b| b > 0));
        assert!(alive(me));
        assert!(threads(me).is_some_and(|n| n >= 1));
        assert!(with_descendants(me).contains(&me));
        let (soft, hard) = nofile_limit().expect("limits");
        assert!(soft <= hard);
    }
}
