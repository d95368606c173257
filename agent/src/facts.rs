//! Host facts reported at enrollment (sysinfo, plus `/etc/machine-id`).

use latch_common::api::HostFacts;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Reads `/etc/machine-id` (trimmed).
pub fn machine_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/etc/machine-id")?
        .trim()
        .to_owned())
}

/// Collects the facts of this host.
pub fn collect() -> std::io::Result<HostFacts> {
    let system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .map_err(|e| std::io::Error::other(format!("sysinfo: {e}")))?;
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .map_err(std::io::Error::from)?;
    Ok(HostFacts {
        hostname,
        os: System::long_os_version().unwrap_or_else(|_| "Linux".to_owned()),
        kernel: System::kernel_version().unwrap_or_else(|_| "unknown".to_owned()),
        arch: System::cpu_arch(),
        cpus: u32::try_from(system.cpus().len())
            .unwrap_or(u32::MAX)
            .max(1),
        memory_bytes: system.total_memory(),
        machine_id: machine_id()?,
    })
}
