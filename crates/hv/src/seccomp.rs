//! seccomp filters for the threads of a domain process, built with `seccompiler`: each kind of
//! thread may make only the system calls it needs (and `ioctl` only with the requests it
//! needs); anything else kills the domain process, and only it.
//!
//! Filters stack: a thread starts with its creator's filter and may add its own, narrower one.
//! The control thread installs [`ThreadKind::Control`] once the process is confined; the
//! supervisor, console, status and transition threads it starts inherit that; vCPU threads, the
//! I/O thread and the working-set sampler each add theirs at their start. So the control filter
//! is the union of what every thread needs, and the narrow filters guard the threads that run
//! guest-driven code hottest: the vCPUs (port and MMIO exits) and the I/O thread (the
//! virtqueues).
//!
//! The lists come from tracing domain processes (`strace -ff`) through their life: launch,
//! boots and reboots, pause and unpause, counters, console, power-off, destroy; with raw and
//! qcow2 disks, switch ports, socket links and TAPs.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

/// The kinds of thread of a domain process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs a vCPU.
    Vcpu,
    /// Serves the paravirtual devices.
    Io,
    /// Everything else: the channel, building machines, supervising.
    Control,
    /// Samples the guest's working set (`crate::sampling`): takes pages away and serves
    /// their faults.
    Sampler,
}

/// A filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the {kind:?} seccomp filter: {why}")]
pub struct SeccompError {
    /// For which thread kind.
    pub kind: ThreadKind,
    /// Why.
    pub why: String,
}

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_GET_API_VERSION, KVMIO, 0x00);
ioctl_io_nr!(KVM_CREATE_VM, KVMIO, 0x01);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_io_nr!(KVM_GET_VCPU_MMAP_SIZE, KVMIO, 0x04);
ioctl_iowr_nr!(
    KVM_GET_SUPPORTED_CPUID,
    KVMIO,
    0x05,
    kvm_bindings::kvm_cpuid2
);
ioctl_io_nr!(KVM_CREATE_VCPU, KVMIO, 0x41);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_bindings::kvm_userspace_memory_region
);
ioctl_io_nr!(KVM_SET_TSS_ADDR, KVMIO, 0x47);
ioctl_iow_nr!(KVM_SET_IDENTITY_MAP_ADDR, KVMIO, 0x48, u64);
ioctl_io_nr!(KVM_CREATE_IRQCHIP, KVMIO, 0x60);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(KVM_CREATE_PIT2, KVMIO, 0x77, kvm_bindings::kvm_pit_config);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_bindings::kvm_msrs);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_bindings::kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_bindings::kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_bindings::kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_bindings::kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_bindings::kvm_xsave);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_bindings::kvm_xsave);
// Saving and restoring a domain (`crate::state`).
ioctl_iowr_nr!(
    KVM_GET_MSR_INDEX_LIST,
    KVMIO,
    0x02,
    kvm_bindings::kvm_msr_list
);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_bindings::kvm_irqchip);
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_bindings::kvm_irqchip);
ioctl_iow_nr!(KVM_SET_CLOCK, KVMIO, 0x7b, kvm_bindings::kvm_clock_data);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_bindings::kvm_clock_data);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_bindings::kvm_msrs);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_bindings::kvm_mp_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_bindings::kvm_mp_state);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_bindings::kvm_pit_state2);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_bindings::kvm_pit_state2);
ioctl_ior_nr!(
    KVM_GET_VCPU_EVENTS,
    KVMIO,
    0x9f,
    kvm_bindings::kvm_vcpu_events
);
ioctl_iow_nr!(
    KVM_SET_VCPU_EVENTS,
    KVMIO,
    0xa0,
    kvm_bindings::kvm_vcpu_events
);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_bindings::kvm_debugregs);
ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_bindings::kvm_debugregs);
ioctl_io_nr!(KVM_SET_TSC_KHZ, KVMIO, 0xa2);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_bindings::kvm_xcrs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_bindings::kvm_xcrs);
ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_bindings::kvm_dirty_log);
/// `FIONBIO`: a socket or descriptor made non-blocking.
const FIONBIO: u64 = 0x5421;

/// What every thread needs: the runtime (memory, futexes, signals, thread exit), time, and
/// reading and writing descriptors it holds.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_prctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // Only ever narrows what the thread may do: a vCPU or I/O thread starts under the control
    // thread's filter and adds its own.
    libc::SYS_seccomp,
    // Let through here only to be answered EACCES by the second filter every thread gets
    // ([`refuse_opens`]): the C library opens files of its own accord (its allocator reads
    // /proc/sys/vm/overcommit_memory the first time a thread's heap shrinks) and copes with a
    // refusal. A confined process has nothing to open anyway: an empty root, and Landlock.
    libc::SYS_openat,
    libc::SYS_open,
];

/// Disks (raw and qcow2, through imago), network backends and event descriptors.
const DEVICE_IO: &[libc::c_long] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_fstatfs,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
];

/// The control thread's own: the channel, building machines (VMs, vCPUs, eventfds, the I/O
/// thread's epoll), starting threads, kicking vCPUs, counting resident memory.
const CONTROL: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_tgkill,
    libc::SYS_mincore,
    // `vessel run`'s domain waits for SIGTERM and SIGINT on a thread (to press the power
    // button); waiting takes nothing but a blocked signal.
    libc::SYS_rt_sigtimedwait,
];

fn ioctls(requests: &[u64]) -> Result<Vec<SeccompRule>, String> {
    requests
        .iter()
        .map(|&r| {
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, r)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// The filter for `kind`, as a BPF program.
fn program(kind: ThreadKind) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut allow = |calls: &[libc::c_long]| {
        for &c in calls {
            rules.insert(c, Vec::new());
        }
    };
    allow(COMMON);
    let kvm_get_state: Vec<u64> = vec![KVM_GET_REGS(), KVM_GET_SREGS()];
    let requests: Vec<u64> = match kind {
        ThreadKind::Vcpu => {
            let mut r = vec![KVM_RUN()];
            r.extend(&kvm_get_state);
            r
        }
        ThreadKind::Io => {
            allow(DEVICE_IO);
            // FIONBIO: also a VIF's new switch-port socket, made non-blocking on this thread
            // when a `replace_backend` control action hands it over (the action's other calls,
            // epoll_ctl and close, are in the lists already).
            vec![FIONBIO]
        }
        ThreadKind::Sampler => {
            allow(&[libc::SYS_mincore]);
            crate::sampling::ioctl_requests().to_vec()
        }
        ThreadKind::Control => {
            allow(DEVICE_IO);
            allow(CONTROL);
            let mut r: Vec<u64> = [
                KVM_GET_API_VERSION(),
                KVM_CREATE_VM(),
                KVM_CHECK_EXTENSION(),
                KVM_GET_VCPU_MMAP_SIZE(),
                KVM_GET_SUPPORTED_CPUID(),
                KVM_CREATE_VCPU(),
                KVM_SET_USER_MEMORY_REGION(),
                KVM_SET_TSS_ADDR(),
                KVM_SET_IDENTITY_MAP_ADDR(),
                KVM_CREATE_IRQCHIP(),
                KVM_IRQFD(),
                KVM_CREATE_PIT2(),
                KVM_IOEVENTFD(),
                KVM_RUN(),
                KVM_SET_REGS(),
                KVM_SET_SREGS(),
                KVM_SET_MSRS(),
                KVM_SET_FPU(),
                KVM_GET_LAPIC(),
                KVM_SET_LAPIC(),
                KVM_SET_CPUID2(),
                KVM_GET_XSAVE(),
                KVM_SET_XSAVE(),
            ]
            .to_vec();
            r.extend(&kvm_get_state);
            // Saving a paused domain and restoring one: the control thread takes and gives
            // the vCPUs' and the VM's state (`hv::state`).
            r.extend([
                KVM_GET_MSR_INDEX_LIST(),
                KVM_GET_IRQCHIP(),
                KVM_SET_IRQCHIP(),
                KVM_GET_CLOCK(),
                KVM_SET_CLOCK(),
                KVM_GET_MSRS(),
                KVM_GET_MP_STATE(),
                KVM_SET_MP_STATE(),
                KVM_GET_PIT2(),
                KVM_SET_PIT2(),
                KVM_GET_VCPU_EVENTS(),
                KVM_SET_VCPU_EVENTS(),
                KVM_GET_DEBUGREGS(),
                KVM_SET_DEBUGREGS(),
                KVM_GET_TSC_KHZ(),
                KVM_SET_TSC_KHZ(),
                KVM_GET_XCRS(),
                KVM_SET_XCRS(),
                KVM_KVMCLOCK_CTRL(),
            ]);
            // Migrating a running domain: KVM's dirty log turned on and read (the slots are
            // registered again with its flag, through KVM_SET_USER_MEMORY_REGION).
            r.push(KVM_GET_DIRTY_LOG());
            r.push(FIONBIO);
            // The working-set sampler starts under this filter and adds its own.
            r.extend(crate::sampling::ioctl_requests());
            r
        }
    };
    rules.insert(libc::SYS_ioctl, ioctls(&requests)?);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The filter stacked on every thread's own: opening a file by path fails with EACCES, and
/// everything else is left to the other filter. (Filters stack and the strictest answer wins,
/// so the thread's filter must allow the opens for this answer to be the one given.)
fn refuse_opens() -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [libc::SYS_openat, libc::SYS_open]
        .into_iter()
        .map(|c| (c, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Installs the filter for `kind` on the calling thread (on top of any it has), with the one
/// that refuses opens.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let fail = |why: String| SeccompError { kind, why };
    let prog = program(kind).map_err(fail)?;
    let opens = refuse_opens().map_err(fail)?;
    for p in [&opens, &prog] {
        seccompiler::apply_filter(p).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// Makes a system call that no thread's filter allows (`acct`); the tests of the filters use
/// it. Without a filter it only fails (no privilege).
pub fn forbidden_call() {
    // SAFETY: acct(NULL) takes no memory from us; it turns process accounting off, which an
    // unprivileged process may not do (EPERM), and a filtered one may not even try.
    unsafe {
        libc::syscall(libc::SYS_acct, std::ptr::null::<libc::c_char>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_builds_and_ioctl_numbers_are_the_kernels() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Io,
            ThreadKind::Control,
            ThreadKind::Sampler,
        ] {
            let prog = program(kind).unwrap();
            assert!(!prog.is_empty());
        }
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_CREATE_VM(), 0xae01);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_GET_IRQCHIP(), 0xc208_ae62);
        assert_eq!(KVM_SET_IRQCHIP(), 0x8208_ae63);
        assert_eq!(KVM_GET_CLOCK(), 0x8030_ae7c);
        assert_eq!(KVM_GET_MSRS(), 0xc008_ae88);
        assert_eq!(KVM_GET_MSR_INDEX_LIST(), 0xc004_ae02);
        assert_eq!(KVM_GET_VCPU_EVENTS(), 0x8040_ae9f);
        assert_eq!(KVM_GET_PIT2(), 0x8070_ae9f);
        assert_eq!(KVM_GET_XCRS(), 0x8188_aea6);
    }

    #[test]
    fn a_call_outside_the_filter_kills_the_process() {
        // In a child: the test process itself must live on.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::filtered_child",
                "--include-ignored",
                "--nocapture",
            ])
            .env("VESSEL_HV_SECCOMP_CHILD", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ALLOWED-CALLS-WORK"), "{text}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{:?}: {text}",
            out.status
        );
    }

    #[test]
    #[ignore = "run by a_call_outside_the_filter_kills_the_process, in a child process"]
    fn filtered_child() {
        if std::env::var_os("VESSEL_HV_SECCOMP_CHILD").is_none() {
            return;
        }
        apply(ThreadKind::Io).unwrap();
        let t = std::time::Instant::now();
        assert!(t.elapsed().as_secs() < 10);
        // Opening a file is refused, not punished.
        let e = std::fs::File::open("/proc/sys/vm/overcommit_memory").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        println!("ALLOWED-CALLS-WORK");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        forbidden_call();
        println!("NOT-KILLED");
    }
}
