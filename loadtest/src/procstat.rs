//! Reading a node's memory and CPU from /proc (Linux only), so figures come from the
//! kernel's accounting of the node process rather than from the node itself.

use anyhow::Context;

/// Clock ticks per second of /proc/PID/stat times (`USER_HZ`). The kernel exports these
/// times in USER_HZ, which is 100 on x86_64 and aarch64 whatever the kernel's own HZ;
/// `getconf CLK_TCK` prints it. Hard-coded rather than read through `sysconf` to keep `libc`
/// out of the harness.
const TICKS_PER_SECOND: f64 = 100.0;

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss(&status).context("no VmRSS line")
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User plus system CPU seconds used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu(&stat).context("malformed /proc/PID/stat")
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The command name may contain spaces and parentheses: fields are counted after its
    // last closing paren.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line (1-based); the first field after the
    // name is the 3rd (state), so they sit at indices 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// User plus system CPU seconds of all `pids` together; `None` when no PID was given.
pub fn cpu_total(pids: &[u32]) -> anyhow::Result<Option<f64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|p| cpu_seconds(*p))
        .sum::<anyhow::Result<f64>>()
        .map(Some)
}

/// Resident bytes of all `pids` together; `None` when no PID was given.
pub fn rss_total(pids: &[u32]) -> anyhow::Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|p| rss_bytes(*p))
        .sum::<anyhow::Result<u64>>()
        .map(Some)
}

/// For readings taken at the end of a run: a node that died meanwhile is reported (on
/// stderr, and as `None`), not a harness error.
pub fn at_end<T>(what: &str, reading: anyhow::Result<Option<T>>) -> Option<T> {
    reading.unwrap_or_else(|e| {
        eprintln!("wsgate-loadtest: cannot read the node's {what} at the end: {e:#}");
        None
    })
}

/// The CPU seconds the `pids` used since `before` (a [`cpu_total`] reading), read now with
/// [`at_end`]'s rules; `None` when there was no first reading.
pub fn cpu_since(before: Option<f64>, pids: &[u32]) -> Option<f64> {
    let before = before?;
    at_end("CPU", cpu_total(pids)).map(|after| after - before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_rss("Name:\tx\n"), None);
        let stat = "123 (gateway node) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1";
        assert_eq!(parse_cpu(stat), Some(4.0));
        // A name with a closing paren inside.
        let stat = "9 (a) b) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0 20 0 1";
        assert_eq!(parse_cpu(stat), Some(0.03));
        assert_eq!(parse_cpu("garbage"), None);
        assert_eq!(parse_cpu("1 (x)"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_total(&[me]).unwrap().unwrap() > 0);
        assert!(cpu_total(&[me]).unwrap().unwrap() >= 0.0);
        assert_eq!(rss_total(&[]).unwrap(), None);
        assert!(rss_total(&[u32::MAX]).is_err());
        assert_eq!(at_end("RSS", rss_total(&[u32::MAX])), None);
    }
}
