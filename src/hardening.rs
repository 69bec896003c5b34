//! Process-level protections for a program that holds secrets in memory:
//! no core dumps (they would write secret values to disk) and no ptrace
//! attach or `/proc/<pid>/mem` reads by other unprivileged processes.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_dumps_are_off_after_protecting() {
        assert!(
            protect_process().is_empty(),
            "both protections apply on Linux"
        );
        let limit = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!(limit.current, Some(0));
        #[cfg(target_os = "linux")]
        assert_eq!(
            rustix::process::dumpable_behavior().expect("prctl"),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
