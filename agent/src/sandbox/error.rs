//! Why a VM could not be started, reached or changed.

use std::path::PathBuf;
use std::time::Duration;

/// Why a VM could not be started, reached or changed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// File or process error.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or program.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 {path} failed: {stderr}")]
    Mkfs {
        /// The disk.
        path: PathBuf,
        /// Its complaint.
        stderr: String,
    },
    /// The VMM exited (before the guest was ready, or while adopting it).
    #[error("the VMM exited (see the pod's vmm.log and console.log); last connection error: {0}")]
    VmmExited(String),
    /// The guest agent did not answer in time.
    #[error("the guest agent did not answer within {timeout:?}: {last}")]
    GuestTimeout {
        /// The limit.
        timeout: Duration,
        /// The last error.
        last: String,
    },
    /// A control-socket request failed.
    #[error("VMM control socket {socket}: {reason}")]
    Control {
        /// The socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The VMM refused a control request, or its reply could not be read.
    #[error("VMM control socket {socket}: {cmd} {source}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// The request.
        cmd: &'static str,
        /// What went wrong.
        source: vmlet_vmm_api::ProtocolError,
    },
    /// The VMM did not answer a control request in time.
    #[error("the VMM (pid {pid}) did not answer {cmd} within {timeout:?}")]
    ControlTimeout {
        /// The VMM.
        pid: u32,
        /// The request.
        cmd: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// More vCPUs than the VMM takes.
    #[error("{0} vCPUs asked for, the VMM takes at most 255")]
    Vcpus(u32),
    /// The VMM's command line cannot express the configuration.
    #[error("the VMM's command line: {0}")]
    VmmArgs(vmlet_vmm_api::ArgsError),
    /// A step of the VMM's jail failed (in the child, before exec).
    #[error("cannot jail the VMM: {step}: {source}")]
    Jail {
        /// The step.
        step: String,
        /// Why.
        source: std::io::Error,
    },
    /// A path the jail would hold cannot be expressed (relative, `..`, NUL).
    #[error("cannot jail the VMM: unusable path {0}")]
    JailPath(PathBuf),
    /// Every uid of the jail range is held by a pod.
    #[error("no free uid for the VMM's jail: all of {first}..{} are in use (raise jail.uid_count)", u64::from(*.first) + u64::from(*.count))]
    NoFreeUid {
        /// First of the range.
        first: u32,
        /// Its size.
        count: u32,
    },
    /// The host's kernel gave no random bytes.
    #[error("cannot get random bytes from the kernel: {0}")]
    Random(getrandom::Error),
    /// The guest agent refused or failed a call.
    #[error("the guest agent's {call} failed: {status}")]
    Guest {
        /// The call.
        call: &'static str,
        /// Its status.
        status: Box<tonic::Status>,
    },
    /// A recovered pod's uid is claimed by another pod.
    #[error("the jail uid {uid} is also claimed by {holder}")]
    UidTaken {
        /// The uid.
        uid: u32,
        /// The pod directory that claims it.
        holder: PathBuf,
    },
}
