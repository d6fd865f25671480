//! A process's RSS and CPU time, read from /proc.

/// A process, by its /proc directory.
pub struct Proc(String);

impl Proc {
    pub fn new(pid: u32) -> Self {
        Self(format!("/proc/{pid}"))
    }

    pub fn own() -> Self {
        Self("/proc/self".into())
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("{}/status", self.0)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// User plus system CPU seconds (clock ticks are 1/100 s on Linux).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("{}/stat", self.0)).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (ticks(11) + ticks(12)) as f64 / 100.0
    }
}
