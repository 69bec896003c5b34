//! Process-level protections for a program that holds secrets in memory:
//! no core dumps (they would write secret values to disk) and no ptrace
//! attach or /proc/<pid>/mem reads by other unprivileged processes.

/// Disable core dumps and mark the process non-dumpable where the OS allows.
/// Returns what could not be done, for one warning line at start.
pub fn protect_process() -> Vec<String> {
    let mut failed = Vec::new();
    let none = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Core, none) {
        failed.push(format!("RLIMIT_CORE=0: {e}"));
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        failed.push(format!("PR_SET_DUMPABLE=0: {e}"));
    }
    failed
}
