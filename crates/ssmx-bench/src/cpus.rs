//! Where the benchmark's processes run and what CPU time they spend.
//!
//! `--gateway-cpus` gives the gateway CPUs of its own, as when it runs on a host of its own, and
//! everything else the benchmark starts (agent, plugin, pattern server, the benchmark itself)
//! the remaining ones; without it, all processes share every CPU.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::{sysconf, Pid, SysconfVar};

/// A list of CPU numbers as `taskset -c` takes them: `1`, `0,2`, `2-3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl FromStr for CpuList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a CPU number"))
        };
        let mut cpus = Vec::new();
        for part in text.split(',') {
            match part.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(format!("{part:?} is an empty range"));
                    }
                    cpus.extend(first..=last);
                }
                None => cpus.push(number(part)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&names.join(","))
    }
}

/// The gateway's CPUs and everybody else's.
pub struct Placement {
    gateway: CpuSet,
    rest: CpuSet,
}

impl Placement {
    /// Splits the CPUs this process may use into `gateway` and the rest; each side must keep at
    /// least one.
    pub fn split(gateway: &CpuList) -> anyhow::Result<Self> {
        if let Some(&cpu) = gateway.0.iter().find(|&&cpu| cpu >= CpuSet::count()) {
            bail!("--gateway-cpus: there is no CPU {cpu}");
        }
        let allowed = sched_getaffinity(Pid::from_raw(0)).context("cannot read CPU affinity")?;
        let (mut gateway_set, mut rest) = (CpuSet::new(), CpuSet::new());
        for cpu in 0..CpuSet::count() {
            if !allowed.is_set(cpu).unwrap_or(false) {
                if gateway.0.contains(&cpu) {
                    bail!("--gateway-cpus: CPU {cpu} is not available to this process");
                }
                continue;
            }
            let side = if gateway.0.contains(&cpu) {
                &mut gateway_set
            } else {
                &mut rest
            };
            side.set(cpu).context("CPU number out of range")?;
        }
        if (0..CpuSet::count()).all(|cpu| !rest.is_set(cpu).unwrap_or(false)) {
            bail!("--gateway-cpus {gateway} leaves no CPU for the agent, the plugin and the benchmark");
        }
        Ok(Self {
            gateway: gateway_set,
            rest,
        })
    }

    /// Moves this process (and so everything it starts from now on) to the non-gateway CPUs.
    pub fn confine_self(&self) -> anyhow::Result<()> {
        pin_process(std::process::id(), &self.rest)
    }

    /// Moves the gateway process `pid` to its CPUs; returns the CPUs it is now allowed, read
    /// back from the kernel.
    pub fn place_gateway(&self, pid: u32) -> anyhow::Result<CpuList> {
        pin_process(pid, &self.gateway)?;
        let placed = sched_getaffinity(Pid::from_raw(pid as i32))
            .context("cannot read the gateway's CPU affinity")?;
        Ok(CpuList(
            (0..CpuSet::count())
                .filter(|&cpu| placed.is_set(cpu).unwrap_or(false))
                .collect(),
        ))
    }
}

/// Sets the affinity of every thread of `pid`. Twice over, so a thread started by one that was
/// not yet moved is caught too (new threads inherit their creator's affinity).
fn pin_process(pid: u32, set: &CpuSet) -> anyhow::Result<()> {
    for _ in 0..2 {
        let dir = format!("/proc/{pid}/task");
        let tasks = std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))?;
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread that ended meanwhile is not an error.
            match sched_setaffinity(Pid::from_raw(tid), set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot move thread {tid}")),
            }
        }
    }
    Ok(())
}

/// User plus system CPU time process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("unexpected format of {path}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file: 11 and 12 after the name.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("unexpected format of {path}"))
    };
    let per_second = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64;
    Ok((ticks(11)? + ticks(12)?) / per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!("1".parse::<CpuList>(), Ok(CpuList(vec![1])));
        assert_eq!("3,0-1,1".parse::<CpuList>(), Ok(CpuList(vec![0, 1, 3])));
        assert!("2-1".parse::<CpuList>().is_err());
        assert!("a".parse::<CpuList>().is_err());
        assert!("".parse::<CpuList>().is_err());
        assert_eq!(CpuList(vec![0, 2]).to_string(), "0,2");
    }

    #[test]
    fn cpu_time_of_this_process_grows_with_work() {
        let before = cpu_seconds(std::process::id()).unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(std::process::id()).unwrap() > before);
    }

    #[test]
    fn every_cpu_for_the_gateway_is_refused() {
        let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let all: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect();
        assert!(Placement::split(&CpuList(all)).is_err());
    }
}
