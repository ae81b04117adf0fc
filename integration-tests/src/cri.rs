//! A small blocking CRI v1 client (RuntimeService + ImageService over the daemon's
//! unix socket), and [`Vmletd`]: the daemon as a child process of a test.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
pub use vmlet_cri::proto as v1;
use vmlet_cri::proto::image_service_client::ImageServiceClient;
use vmlet_cri::proto::runtime_service_client::RuntimeServiceClient;
use vmlet_test_support::{busybox_image, TestRegistry};

/// Deadline of one CRI call (RunPodSandbox boots a VM: slow inside a TCG machine).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Now, as Unix nanoseconds (host clock).
pub fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A connected CRI client.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub images: ImageServiceClient<Channel>,
}

fn req<T>(msg: T) -> Request<T> {
    let call = std::any::type_name::<T>();
    crate::watchdog::step(format!(
        "the CRI call of {}",
        call.rsplit("::").next().unwrap_or(call)
    ));
    let mut r = Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl CriClient {
    /// Connects to the CRI socket at `path`.
    pub fn connect(path: &Path) -> Result<CriClient, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let path = path.to_owned();
        let channel = rt
            .block_on(
                Endpoint::from_static("http://cri.sock").connect_with_connector(tower::service_fn(
                    move |_| {
                        let path = path.clone();
                        async move {
                            tokio::net::UnixStream::connect(path)
                                .await
                                .map(hyper_util::rt::TokioIo::new)
                        }
                    },
                )),
            )
            .map_err(|e| e.to_string())?;
        Ok(CriClient {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(channel).max_decoding_message_size(64 << 20),
        })
    }

    /// Runs a future on the client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Pulls an image; returns its ID.
    pub fn pull(&self, image: &str) -> Result<String, Status> {
        let mut c = self.images.clone();
        self.block_on(c.pull_image(req(v1::PullImageRequest {
            image: Some(v1::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })))
        .map(|r| r.into_inner().image_ref)
    }

    /// ListImages.
    pub fn list_images(&self) -> Vec<v1::Image> {
        let mut c = self.images.clone();
        self.block_on(c.list_images(req(v1::ListImagesRequest { filter: None })))
            .expect("ListImages")
            .into_inner()
            .images
    }

    /// RunPodSandbox, once: a pod whose VMM exits while it boots is an error here, in
    /// the emulated TCG machine too (see `Guest::boot`).
    pub fn run_pod(&self, config: v1::PodSandboxConfig) -> Result<String, Status> {
        self.run_pod_with_handler(config, "")
    }

    /// RunPodSandbox with a RuntimeClass handler.
    pub fn run_pod_with_handler(
        &self,
        config: v1::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.run_pod_sandbox(req(v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.into(),
        })))
        .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// StopPodSandbox.
    pub fn stop_pod(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.stop_pod_sandbox(req(v1::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })))
        .map(drop)
    }

    /// RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.remove_pod_sandbox(req(v1::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })))
        .map(drop)
    }

    /// Status: the runtime's conditions, by type: (status, reason, message).
    pub fn conditions(&self) -> HashMap<String, (bool, String, String)> {
        let mut c = self.runtime.clone();
        self.block_on(c.status(req(v1::StatusRequest { verbose: false })))
            .expect("Status")
            .into_inner()
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .map(|c| (c.r#type, (c.status, c.reason, c.message)))
            .collect()
    }

    /// The whole Status answer: conditions, runtime handlers and features.
    pub fn runtime_status(&self) -> v1::StatusResponse {
        let mut c = self.runtime.clone();
        self.block_on(c.status(req(v1::StatusRequest { verbose: false })))
            .expect("Status")
            .into_inner()
    }

    /// vmletd's warm pool as verbose Status shows it (`target`, `ready`, `booting`, and
    /// `failed`: warm VMs that failed the pod they were handed to, which vmletd then
    /// replaced by a fresh boot).
    pub fn warm_pool(&self) -> serde_json::Value {
        let mut c = self.runtime.clone();
        let info = self
            .block_on(c.status(req(v1::StatusRequest { verbose: true })))
            .expect("Status")
            .into_inner()
            .info;
        let runtime: serde_json::Value =
            serde_json::from_str(info.get("runtime").map_or("{}", String::as_str))
                .expect("verbose Status runtime info is JSON");
        runtime["warmPool"].clone()
    }

    /// Waits (up to 5 minutes) until vmletd's warm pool is full and boots nothing, and
    /// asserts that no warm VM failed: vmletd hides such a failure behind a fresh boot.
    pub fn wait_warm_pool_full(&self) {
        self.wait_warm_pool_full_after_failures(0);
    }

    /// Like [`CriClient::wait_warm_pool_full`], for a test that made `failures` warm
    /// VMs fail on purpose.
    pub fn wait_warm_pool_full_after_failures(&self, failures: u64) {
        let pool = self
            .try_wait_warm_pool_full(Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            pool["failed"].as_u64(),
            Some(failures),
            "warm VMs that failed their pod (vmletd booted a fresh VM instead): {pool}"
        );
    }

    /// Waits up to `timeout` until vmletd's warm pool is full and boots nothing; returns
    /// the pool's state then (with its `failed` count).
    pub fn try_wait_warm_pool_full(&self, timeout: Duration) -> Result<serde_json::Value, String> {
        let start = Instant::now();
        loop {
            let pool = self.warm_pool();
            if pool["ready"] == pool["target"] && pool["booting"] == false {
                return Ok(pool);
            }
            if start.elapsed() > timeout {
                return Err(format!("warm pool not full after {timeout:?}: {pool}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pod's primary IP, from PodSandboxStatus.
    pub fn pod_ip(&self, id: &str) -> String {
        self.pod_status(id)
            .expect("PodSandboxStatus")
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    /// PodSandboxStatus.
    pub fn pod_status(&self, id: &str) -> Result<v1::PodSandboxStatusResponse, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.pod_sandbox_status(req(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })))
        .map(|r| r.into_inner())
    }

    /// ListPodSandbox.
    pub fn list_pods(&self, filter: Option<v1::PodSandboxFilter>) -> Vec<v1::PodSandbox> {
        let mut c = self.runtime.clone();
        self.block_on(c.list_pod_sandbox(req(v1::ListPodSandboxRequest { filter })))
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    /// CreateContainer.
    pub fn create(
        &self,
        pod_id: &str,
        config: v1::ContainerConfig,
        pod_config: &v1::PodSandboxConfig,
    ) -> Result<String, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.create_container(req(v1::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })))
        .map(|r| r.into_inner().container_id)
    }

    /// StartContainer.
    pub fn start(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.start_container(req(v1::StartContainerRequest {
            container_id: id.into(),
        })))
        .map(drop)
    }

    /// StopContainer.
    pub fn stop(&self, id: &str, timeout_s: i64) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.stop_container(req(v1::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        })))
        .map(drop)
    }

    /// RemoveContainer.
    pub fn remove(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.remove_container(req(v1::RemoveContainerRequest {
            container_id: id.into(),
        })))
        .map(drop)
    }

    /// ContainerStatus.
    pub fn status(&self, id: &str) -> Result<v1::ContainerStatus, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.container_status(req(v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })))
        .map(|r| r.into_inner().status.unwrap_or_default())
    }

    /// The `info` JSON of verbose ContainerStatus (slot, exit timeline, `logComplete`).
    pub fn status_info(&self, id: &str) -> Result<serde_json::Value, Status> {
        let mut c = self.runtime.clone();
        let r = self.block_on(c.container_status(req(v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })))?;
        let info = r.into_inner().info;
        Ok(serde_json::from_str(info.get("info").map_or("{}", String::as_str)).unwrap_or_default())
    }

    /// ListContainers.
    pub fn list(&self, filter: Option<v1::ContainerFilter>) -> Vec<v1::Container> {
        let mut c = self.runtime.clone();
        self.block_on(c.list_containers(req(v1::ListContainersRequest { filter })))
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    /// ExecSync.
    pub fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<v1::ExecSyncResponse, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.exec_sync(req(v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        })))
        .map(|r| r.into_inner())
    }

    /// ReopenContainerLog.
    pub fn reopen_log(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.reopen_container_log(req(v1::ReopenContainerLogRequest {
            container_id: id.into(),
        })))
        .map(drop)
    }

    /// UpdateContainerResources.
    pub fn update_resources(
        &self,
        id: &str,
        linux: v1::LinuxContainerResources,
    ) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        self.block_on(
            c.update_container_resources(req(v1::UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(linux),
                ..Default::default()
            })),
        )
        .map(drop)
    }

    /// ContainerStats.
    pub fn container_stats(&self, id: &str) -> Result<v1::ContainerStats, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.container_stats(req(v1::ContainerStatsRequest {
            container_id: id.into(),
        })))
        .map(|r| r.into_inner().stats.unwrap_or_default())
    }

    /// ListContainerStats.
    pub fn list_container_stats(
        &self,
        filter: Option<v1::ContainerStatsFilter>,
    ) -> Result<Vec<v1::ContainerStats>, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.list_container_stats(req(v1::ListContainerStatsRequest { filter })))
            .map(|r| r.into_inner().stats)
    }

    /// PodSandboxStats.
    pub fn pod_stats(&self, id: &str) -> Result<v1::PodSandboxStats, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.pod_sandbox_stats(req(v1::PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        })))
        .map(|r| r.into_inner().stats.unwrap_or_default())
    }

    /// ListMetricDescriptors and ListPodSandboxMetrics.
    pub fn pod_metrics(&self) -> (Vec<v1::MetricDescriptor>, Vec<v1::PodSandboxMetrics>) {
        let mut c = self.runtime.clone();
        let d = self
            .block_on(c.list_metric_descriptors(req(v1::ListMetricDescriptorsRequest {})))
            .expect("ListMetricDescriptors")
            .into_inner()
            .descriptors;
        let m = self
            .block_on(c.list_pod_sandbox_metrics(req(v1::ListPodSandboxMetricsRequest {})))
            .expect("ListPodSandboxMetrics")
            .into_inner()
            .pod_metrics;
        (d, m)
    }

    /// ListPodSandboxStats.
    pub fn list_pod_stats(
        &self,
        filter: Option<v1::PodSandboxStatsFilter>,
    ) -> Result<Vec<v1::PodSandboxStats>, Status> {
        let mut c = self.runtime.clone();
        self.block_on(c.list_pod_sandbox_stats(req(v1::ListPodSandboxStatsRequest { filter })))
            .map(|r| r.into_inner().stats)
    }

    /// Subscribes to GetContainerEvents, tells `ready` once subscribed, then returns
    /// the first `n` events (fewer if `timeout` passes first).
    pub fn events(
        &self,
        n: usize,
        timeout: Duration,
        ready: std::sync::mpsc::Sender<()>,
    ) -> Vec<v1::ContainerEventResponse> {
        let (_keep, never) = tokio::sync::oneshot::channel();
        self.events_until(n, timeout, never, ready)
    }

    /// As [`CriClient::events`], but also ends 3 s after `stop` fires (or its sender
    /// is dropped): the events already on their way are still taken, so a test can
    /// look for an unwanted extra event without waiting out the whole `timeout`.
    pub fn events_until(
        &self,
        n: usize,
        timeout: Duration,
        stop: tokio::sync::oneshot::Receiver<()>,
        ready: std::sync::mpsc::Sender<()>,
    ) -> Vec<v1::ContainerEventResponse> {
        let mut c = self.runtime.clone();
        self.block_on(async move {
            let mut stream = c
                .get_container_events(v1::GetEventsRequest {})
                .await
                .expect("GetContainerEvents")
                .into_inner();
            let _ = ready.send(());
            let mut out = Vec::new();
            let collect = async {
                while out.len() < n {
                    match stream.message().await {
                        Ok(Some(e)) => out.push(e),
                        _ => break,
                    }
                }
            };
            let stopped = async {
                let _ = stop.await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            };
            tokio::select! {
                _ = tokio::time::timeout(timeout, collect) => {}
                _ = stopped => {}
            }
            out
        })
    }

    /// Waits until container `id` has exited; returns its status. On a timeout the
    /// panic shows the exit timeline vmletd recorded (when the guest says the process
    /// ended, when its report reached vmletd, when it was recorded) beside the time
    /// of the last status answer, so a late exit shows where it was held.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> v1::ContainerStatus {
        self.first_exited(id, timeout).0
    }

    /// As [`CriClient::wait_exited`], asking every 100 ms; also returns when
    /// ContainerStatus first answered Exited (Unix ns, host clock).
    pub fn first_exited(&self, id: &str, timeout: Duration) -> (v1::ContainerStatus, i64) {
        let start = Instant::now();
        loop {
            let s = self.status(id).expect("ContainerStatus");
            let answered_ns = unix_ns();
            if s.state == v1::ContainerState::ContainerExited as i32 {
                return (s, answered_ns);
            }
            if start.elapsed() >= timeout {
                let info = self.status_info(id).unwrap_or_default();
                panic!(
                    "container {id} still not exited after {timeout:?}: {s:?}\n\
                     exit timeline (Unix ns): guest finished {}, report seen {}, recorded {}, \
                     last status answer {answered_ns}; verbose info {info}",
                    info["guestFinishedAtNs"], info["exitSeenAtNs"], info["finishedAtNs"]
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that exited container `id`'s status first answered Exited (at
    /// `answered_ns`, from [`CriClient::first_exited`]) within `bound` of the moment its
    /// process ended in the guest (`guestFinishedAtNs`: the guest's wall clock is the
    /// host's, through kvm-clock). Returns that delay.
    pub fn assert_exit_prompt(&self, id: &str, answered_ns: i64, bound: Duration) -> Duration {
        let info = self.status_info(id).expect("ContainerStatus");
        let guest = info["guestFinishedAtNs"].as_i64().unwrap_or(0);
        assert!(guest > 0, "no guestFinishedAtNs: {info}");
        let delay_ns = answered_ns - guest;
        assert!(
            delay_ns < bound.as_nanos() as i64,
            "ContainerStatus of {id} first answered Exited {} ms after its process ended \
             in the guest (bound {bound:?}); timeline (Unix ns): guest finished {guest}, \
             report seen {}, recorded {}, first Exited answer {answered_ns}; {info}",
            delay_ns / 1_000_000,
            info["exitSeenAtNs"],
            info["finishedAtNs"]
        );
        Duration::from_nanos(delay_ns.max(0) as u64)
    }

    /// Waits until the log copy of exited container `id` is complete (verbose
    /// ContainerStatus `logComplete`).
    pub fn wait_log_complete(&self, id: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let info = self.status_info(id).expect("ContainerStatus");
            if info["logComplete"] == true {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "the log of {id} is not complete after {timeout:?}: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A pod's `linux` section holding just its security context `sc`.
pub fn sandbox_security(sc: v1::LinuxSandboxSecurityContext) -> Option<v1::LinuxPodSandboxConfig> {
    Some(v1::LinuxPodSandboxConfig {
        security_context: Some(sc),
        ..Default::default()
    })
}

/// A pod config with the given name, its logs under `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: [("test".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

/// A container config running `script` with `sh -c`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, script: &str) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// One entry of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The timestamp as written.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line (pieces joined).
    pub line: String,
}

/// Parses a CRI log file, joining `P` pieces into their lines; panics on a malformed
/// entry. A last line without its newline is a write still in progress (the file is
/// read while it is appended to, as kubelet reads it) and is left for the next read.
pub fn parse_log(text: &str) -> Vec<LogEntry> {
    let mut out = Vec::new();
    let mut partial: Option<LogEntry> = None;
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    for raw in complete.lines() {
        let mut parts = raw.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("malformed CRI log line {raw:?}");
        };
        let line = parts.next().unwrap_or("");
        assert!(
            stream == "stdout" || stream == "stderr",
            "bad stream in {raw:?}"
        );
        assert!(tag == "F" || tag == "P", "bad tag in {raw:?}");
        assert!(
            time.len() >= 20 && time.ends_with('Z') && time.contains('T'),
            "bad time in {raw:?}"
        );
        let e = partial.get_or_insert_with(|| LogEntry {
            time: time.into(),
            stream: stream.into(),
            line: String::new(),
        });
        e.line.push_str(line);
        if tag == "F" {
            out.extend(partial.take());
        }
    }
    out.extend(partial);
    out
}

/// vmletd as a child process, with its state, runtime and log directories in a
/// temporary directory. Drop removes every pod it knows of, stops it, and kills any
/// VMM left under its runtime directory.
///
/// The daemon's log is kept in `vmletd.log` (and copied to stderr, as before), and a
/// thread copies every pod's `vmm.log`, `console.log` and `pod.json` into
/// `pod-logs/<id>/` while the daemon runs, so they outlive the pod. On drop, whether
/// the test passed or not, every VMM that exited with a failure during the test (its
/// `vmm.log` ends in its error line, or vmletd logged "VMM exited" with a status other
/// than 0 and not "as asked") has the tails of its `vmm.log` and `console.log` printed,
/// and such a failure fails the test (a panic at the end of the drop, unless the test
/// is already failing) unless the test declared it with
/// [`Vmletd::expect_vmm_death`] or [`Vmletd::expect_vmm_exits`]: a product crash that
/// the daemon hides (a warm VM replaced, a boot retried) fails the suite.
pub struct Vmletd {
    child: Option<Child>,
    mirror: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    /// VMM failures the test causes on purpose.
    expected: Mutex<ExpectedFailures>,
    /// Extra environment of the daemon.
    env: Vec<(String, String)>,
    /// Temporary root.
    pub dir: tempfile::TempDir,
    /// CRI socket.
    pub socket: PathBuf,
    /// Extra flags.
    args: Vec<String>,
    /// Extra configuration (TOML) before the harness's own `[vm]` table.
    config: String,
    /// Extra keys of the `[vm]` table.
    vm_keys: String,
    /// Shows the daemon's and its pods' logs if the test passes its deadline.
    _watched: crate::watchdog::Watched,
}

/// Configuration a test's daemon starts from: a boot timeout for shared, emulated
/// machines (300 s, as the CRI client's deadline: shorter than the machine limit of
/// `scripts/test.sh`, so a boot that hangs fails the test with its own error); inside the emulated TCG machine one boot at a time (nested guests
/// booting at once crash that machine's own kernel); no warm pool (tests count VMMs
/// and namespaces; `--warm-pool N` turns it on); no templates, for the same reason
/// and since making one boots a VM in the background (`templates = true` in
/// `vm_keys` turns them on).
fn base_config(vm_keys: &str) -> String {
    let emulated = std::env::var("VMLET_IN_WITH_KVM").is_ok_and(|v| v == "tcg");
    let boots = if emulated { 1 } else { 4 };
    // The fault injector wraps vmlet-vmm in a shell script: a jail holds no shell.
    let jail = if std::env::var_os(crate::fault::VMM_FAULT_ENV).is_some() {
        "[jail]\nenabled = false\n"
    } else {
        ""
    };
    let templates = if vm_keys.contains("templates") {
        ""
    } else {
        "templates = false\n"
    };
    format!(
        "[vm]\nboot_timeout_secs = 300\nmax_concurrent_boots = {boots}\nwarm_pool = 0\n{templates}{vm_keys}{jail}"
    )
}

/// A registry on loopback with the busybox image pushed as `tag`, and the image's
/// reference.
pub fn busybox_registry(tag: &str) -> (TestRegistry, String) {
    let registry = TestRegistry::start().expect("start the registry");
    let image = registry
        .push(&busybox_image().expect("busybox image"), tag)
        .expect("push busybox");
    (registry, image)
}

/// The vmletd binary: `VMLET_VMLETD` (the KVM entry point passes `VMLET_*` on), else
/// next to vmlet-vmm.
pub fn vmletd_binary() -> PathBuf {
    std::env::var_os("VMLET_VMLETD")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::real_vmm_binary().with_file_name("vmletd"))
}

impl Vmletd {
    /// Starts vmletd with `args` added to its flags, pods on loopback only (no CNI),
    /// and waits for its socket.
    pub fn start(args: &[&str]) -> Vmletd {
        Self::start_with(args, "[network]\nmode = \"none\"\n")
    }

    /// Starts vmletd with `args` added to its flags and `config` (TOML: top-level keys
    /// first, then tables other than `[vm]`) added to its configuration, and waits for
    /// its socket.
    pub fn start_with(args: &[&str], config: &str) -> Vmletd {
        Self::start_with_env(args, config, &[])
    }

    /// Like [`Vmletd::start_with`], with `env` added to the daemon's environment.
    pub fn start_with_env(args: &[&str], config: &str, env: &[(&str, &str)]) -> Vmletd {
        Self::launch(args, config, "", env)
    }

    /// Starts vmletd with `args` added to its flags and `vm_keys` (TOML lines) added
    /// to its `[vm]` table, and waits for its socket.
    pub fn start_with_vm_keys(args: &[&str], vm_keys: &str) -> Vmletd {
        Self::launch(args, "[network]\nmode = \"none\"\n", vm_keys, &[])
    }

    /// Starts vmletd with `args`, `config` (as for [`Vmletd::start_with`]) and
    /// `vm_keys` (as for [`Vmletd::start_with_vm_keys`]).
    pub fn start_configured(args: &[&str], config: &str, vm_keys: &str) -> Vmletd {
        Self::launch(args, config, vm_keys, &[])
    }

    fn launch(args: &[&str], config: &str, vm_keys: &str, env: &[(&str, &str)]) -> Vmletd {
        crate::require_kvm();
        let dir = tempfile::Builder::new()
            .prefix("vd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("cri.sock");
        let _watched = crate::watchdog::watch(
            "vmletd",
            vec![dir.path().join("vmletd.log"), dir.path().join("pod-logs")],
        );
        let mut d = Vmletd {
            _watched,
            child: None,
            mirror: None,
            socket,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            config: config.to_owned(),
            vm_keys: vm_keys.to_owned(),
            expected: Mutex::default(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn();
        let stop = Arc::new(AtomicBool::new(false));
        let (pods, copies) = (d.state_dir().join("pods"), d.pod_logs_dir());
        let flag = stop.clone();
        let thread = std::thread::spawn(move || loop {
            let last = flag.load(Ordering::Acquire);
            mirror_pod_logs(&pods, &copies);
            if last {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        });
        d.mirror = Some((stop, thread));
        d
    }

    /// Where the harness keeps copies of the pods' logs.
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.path().join("pod-logs")
    }

    /// The daemon's own log (stderr), over all its restarts.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("vmletd.log")
    }

    /// State directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runtime directory.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Runs `script` in pod `pod`'s guest itself (not in a container), through its
    /// guest agent; returns its stdout, trimmed. Panics if the script fails.
    pub fn in_guest(&self, pod: &str, script: &str) -> String {
        let vsock = self.run_dir().join("pods").join(pod).join("vsock");
        let agent = crate::agent::GuestAgent::connect(&vsock).expect("connect to the guest");
        let r = agent.run(script);
        assert_eq!(
            r.exit_code,
            0,
            "{script}: {:?}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).trim().to_string()
    }

    /// Where tests put pod logs.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(vmletd_binary());
        cmd.arg("--config")
            .arg(self.dir.path().join("vmletd.toml"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--runtime-dir")
            .arg(self.run_dir())
            .arg("--kernel")
            .arg(crate::kernel())
            .arg("--initramfs")
            .arg(crate::initramfs())
            .arg("--vmm")
            .arg(crate::vmm_binary())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        std::fs::write(
            self.dir.path().join("vmletd.toml"),
            // The test's keys first: its top-level keys must come before any table.
            format!("{}{}", self.config, base_config(&self.vm_keys)),
        )
        .expect("write config");
        let mut child = cmd.spawn().expect("start vmletd");
        // The log goes to vmletd.log and to the test's output.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("open vmletd.log");
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).split(b'\n') {
                    let Ok(line) = line else { break };
                    let _ = file.write_all(&line);
                    let _ = file.write_all(b"\n");
                    crate::say(&String::from_utf8_lossy(&line));
                }
            });
        }
        self.child = Some(child);
        let start = Instant::now();
        while CriClient::connect(&self.socket).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("vmletd exited early: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "vmletd did not serve its socket"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client.
    pub fn client(&self) -> CriClient {
        CriClient::connect(&self.socket).expect("connect to vmletd")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("vmletd is running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().expect("wait for vmletd")
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "vmletd still runs");
        self.spawn();
    }

    /// Declares that the test ends the VMM of pod (or warm VM) `id` itself, by a kill or
    /// a crash it provokes: that VMM's failed exit does not fail the test.
    pub fn expect_vmm_death(&self, id: &str) {
        lock(&self.expected).pods.insert(id.to_owned());
    }

    /// Declares that the VMM failures whose vmletd line or last `vmm.log` line contains
    /// `what` (for example `"exit status 1"` from a VMM binary the test broke) are the
    /// test's doing, whichever pod they belong to.
    pub fn expect_vmm_exits(&self, what: &str) {
        lock(&self.expected).exits.push(what.to_owned());
    }

    /// The pid of pod `id`'s VMM, from the daemon's record of the pod.
    pub fn vmm_pid_of(&self, id: &str) -> u32 {
        let text = std::fs::read_to_string(self.state_dir().join("pods").join(id).join("pod.json"))
            .expect("pod record");
        let v: serde_json::Value = serde_json::from_str(&text).expect("pod record JSON");
        v["vmm_pid"].as_u64().expect("vmm_pid") as u32
    }

    /// Pids of the VMMs running under this daemon's runtime directory.
    pub fn vmm_pids(&self) -> Vec<u32> {
        let needle = self.run_dir().display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            let text = String::from_utf8_lossy(&cmdline);
            let argv0 = text.split('\0').next().unwrap_or("");
            if !zombie && argv0.ends_with("vmlet-vmm") && text.contains(&needle) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Vmletd {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.mirror.take() {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
        let failed = report_failed_vmms(
            &self.state_dir().join("pods"),
            &self.pod_logs_dir(),
            &self.log_file(),
        );
        let unexpected: Vec<FailedVmm> = {
            let expected = lock(&self.expected);
            failed.into_iter().filter(|f| !expected.covers(f)).collect()
        };
        if std::thread::panicking() {
            // The consoles vmletd kept of VMs that failed to start a pod.
            let kept = std::fs::read_dir(self.state_dir().join("failed-vms"));
            for e in kept.into_iter().flatten().flatten() {
                crate::print_tail("kept console", &e.path(), 40);
            }
            // And of the VMs still running: a boot the client gave up waiting for (a
            // guest that never answered) has failed in nobody's eyes yet.
            let pods = std::fs::read_dir(self.state_dir().join("pods"));
            for e in pods.into_iter().flatten().flatten() {
                let console = e.path().join("console.log");
                if console.exists() {
                    crate::say(&format!(
                        "=== pod VM {} is still running",
                        e.file_name().to_string_lossy()
                    ));
                    crate::print_tail("console.log", &console, 30);
                    crate::print_tail("vmm.log", &e.path().join("vmm.log"), 30);
                }
            }
        }
        if self.child.is_some() {
            if let Ok(c) = CriClient::connect(&self.socket) {
                for p in c.list_pods(None) {
                    let _ = c.remove_pod(&p.id);
                }
            }
            let _ = self.signal_and_wait(libc::SIGTERM);
        }
        for pid in self.vmm_pids() {
            // SAFETY: kill(2) on a VMM this test's daemon started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // A test that already fails keeps its own message (a second panic would abort).
        if !unexpected.is_empty() && !std::thread::panicking() {
            panic!(
                "{} VMM(s) exited with a failure the test did not expect (a test that \
                 ends a VMM on purpose declares it: Vmletd::expect_vmm_death); their logs \
                 are printed above:\n{}",
                unexpected.len(),
                unexpected
                    .iter()
                    .map(FailedVmm::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// VMM failures a test causes on purpose (see [`Vmletd::expect_vmm_death`]).
#[derive(Debug, Default)]
struct ExpectedFailures {
    /// Pods (or warm VMs) whose VMM the test ends.
    pods: BTreeSet<String>,
    /// Text of the failures the test causes, whichever pod they belong to.
    exits: Vec<String>,
}

impl ExpectedFailures {
    fn covers(&self, f: &FailedVmm) -> bool {
        f.pod.as_ref().is_some_and(|p| self.pods.contains(p))
            || f.evidence
                .iter()
                .any(|line| self.exits.iter().any(|what| line.contains(what.as_str())))
    }
}

/// A VMM that exited with a failure during a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedVmm {
    /// Its pod (or warm VM), if the harness knows it.
    pub pod: Option<String>,
    /// Its pid, if known.
    pub pid: Option<u32>,
    /// What says it failed: vmletd's "VMM exited" lines and the last line of its
    /// `vmm.log`.
    pub evidence: Vec<String>,
}

impl std::fmt::Display for FailedVmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VMM pid {} of pod {}: {}",
            self.pid.map_or("?".to_owned(), |p| p.to_string()),
            self.pod.as_deref().unwrap_or("(none known)"),
            self.evidence.join(" | ")
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copies each pod's `vmm.log`, `console.log` and `pod.json` that changed size from
/// `pods/<id>/` to `copies/<id>/`, and adds each VMM pid its record names to
/// `copies/<id>/vmm-pids` (the record forgets the pid once the VMM is gone). Files
/// that are missing or vanish meanwhile are skipped.
fn mirror_pod_logs(pods: &Path, copies: &Path) {
    let Ok(entries) = std::fs::read_dir(pods) else {
        return;
    };
    for entry in entries.flatten() {
        let to = copies.join(entry.file_name());
        for name in ["vmm.log", "console.log", "pod.json"] {
            let src = entry.path().join(name);
            let Ok(meta) = std::fs::metadata(&src) else {
                continue;
            };
            let dst = to.join(name);
            if std::fs::metadata(&dst).is_ok_and(|m| m.len() == meta.len()) {
                continue;
            }
            if std::fs::create_dir_all(&to).is_ok() {
                let _ = std::fs::copy(&src, &dst);
            }
        }
        if let Some(pid) = record_vmm_pid(&to.join("pod.json")) {
            let seen = to.join("vmm-pids");
            let known = std::fs::read_to_string(&seen).unwrap_or_default();
            if !known.lines().any(|l| l == pid.to_string()) {
                let _ = std::fs::write(&seen, format!("{known}{pid}\n"));
            }
        }
    }
}

/// The `vmm_pid` of a pod record.
fn record_vmm_pid(record: &Path) -> Option<u32> {
    let record: serde_json::Value = std::fs::read_to_string(record)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())?;
    record["vmm_pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

/// `text` without ANSI escape sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The pid of each VMM vmletd saw exit with a failure, with the line: vmletd logs one
/// "VMM exited: HOW" line per VMM it started, ending in "(as asked)" when it stopped or
/// killed the VMM itself or the guest powered off (status 0).
pub fn failed_vmm_exits(log: &str) -> Vec<(Option<u32>, String)> {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("VMM exited: ") && !l.contains("(as asked)"))
        .map(|l| {
            (
                number_after(&l, "pid=").and_then(|p| u32::try_from(p).ok()),
                l,
            )
        })
        .collect()
}

/// Whether a VMM's log says it exited with a failure: vmlet-vmm ends every non-zero
/// exit with `vmlet-vmm: error: REASON (exit status N)` as its last line
/// (`vmlet_vmm_api::exit`).
pub fn vmm_log_says_failed(log: &str) -> bool {
    log.lines()
        .map(strip_ansi)
        .rfind(|l| !l.trim().is_empty())
        .is_some_and(|l| vmlet_vmm_api::exit::is_failure_line(&l))
}

/// The pids vmletd logged "VMM exited: ... (as asked)" for: it stopped or killed them
/// itself, or their guest powered off.
pub fn asked_vmm_exits(log: &str) -> BTreeSet<u32> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("VMM exited: ") && l.contains("(as asked)"))
        .filter_map(|l| {
            let rest = &l[l.find("pid=")? + 4..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Whether process `pid` runs (and is no zombie).
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// A pod's files: in its directory under `pods` or, once the pod is gone, in the
/// harness's copies under `copies`.
struct PodFiles<'a> {
    pods: &'a Path,
    copies: &'a Path,
    id: &'a std::ffi::OsStr,
}

impl PodFiles<'_> {
    fn get(&self, name: &str) -> PathBuf {
        let live = self.pods.join(self.id).join(name);
        if live.exists() {
            live
        } else {
            self.copies.join(self.id).join(name)
        }
    }

    /// The pids of the pod's VMMs: those the harness saw in its record, and the one it
    /// names now, last.
    fn vmm_pids(&self) -> Vec<u32> {
        let seen =
            std::fs::read_to_string(self.copies.join(self.id).join("vmm-pids")).unwrap_or_default();
        let mut pids: Vec<u32> = seen.lines().filter_map(|l| l.parse().ok()).collect();
        if let Some(now) = record_vmm_pid(&self.get("pod.json")) {
            pids.retain(|p| *p != now);
            pids.push(now);
        }
        pids
    }

    /// The last line of `vmm.log`, if it says the VMM failed.
    fn logged_failure(&self) -> Option<String> {
        let log = String::from_utf8_lossy(&std::fs::read(self.get("vmm.log")).unwrap_or_default())
            .into_owned();
        if !vmm_log_says_failed(&log) {
            return None;
        }
        log.lines().map(strip_ansi).rfind(|l| !l.trim().is_empty())
    }
}

/// The failure of the VMM of the pod whose files `files` are, if it failed: its
/// `vmm.log` ends in an error (unless vmletd ended it as asked, `asked`, or it still
/// runs), or vmletd logged a failed exit of its pid (taken out of `exits`).
fn pod_vmm_failure(
    files: &PodFiles<'_>,
    exits: &mut Vec<(Option<u32>, String)>,
    asked: &BTreeSet<u32>,
) -> Option<FailedVmm> {
    let pids = files.vmm_pids();
    // A VMM that still runs has not exited, whatever its log says last (a pid reused
    // since is a risk the report can take).
    let ended_by_itself = pids.iter().all(|p| !process_runs(*p) && !asked.contains(p));
    let ours = |p: &Option<u32>| p.is_some_and(|p| pids.contains(&p));
    let mut evidence: Vec<String> = exits
        .iter()
        .filter(|(p, _)| ours(p))
        .map(|(_, l)| l.clone())
        .collect();
    exits.retain(|(p, _)| !ours(p));
    if ended_by_itself {
        evidence.extend(files.logged_failure());
    }
    if evidence.is_empty() {
        return None;
    }
    Some(FailedVmm {
        pod: Some(files.id.to_string_lossy().into_owned()),
        pid: pids.last().copied(),
        evidence,
    })
}

/// Prints the tails of `vmm.log` and `console.log` of every pod whose VMM exited with a
/// failure, from the pod's directory under `pods` or, once the pod is gone, from the
/// harness's copies under `copies`; and the lines of vmletd's `log` about failed VMMs
/// that belong to no pod it knows. Returns them all.
fn report_failed_vmms(pods: &Path, copies: &Path, log: &Path) -> Vec<FailedVmm> {
    let daemon_log = strip_ansi(&String::from_utf8_lossy(
        &std::fs::read(log).unwrap_or_default(),
    ));
    let mut exits = failed_vmm_exits(&daemon_log);
    let asked = asked_vmm_exits(&daemon_log);
    let mut ids = BTreeSet::new();
    for dir in [pods, copies] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            ids.insert(e.file_name());
        }
    }
    let mut failed = Vec::new();
    for id in &ids {
        let files = PodFiles { pods, copies, id };
        let Some(f) = pod_vmm_failure(&files, &mut exits, &asked) else {
            continue;
        };
        crate::say(&format!(
            "=== the VMM of pod {} (pid {}) exited with a failure:",
            id.to_string_lossy(),
            f.pid.map_or("?".to_owned(), |p| p.to_string())
        ));
        for line in &f.evidence {
            crate::say(&format!("    {line}"));
        }
        crate::print_tail("vmm.log", &files.get("vmm.log"), 40);
        crate::print_tail("console.log", &files.get("console.log"), 40);
        failed.push(f);
    }
    for (pid, line) in exits {
        crate::say(&format!(
            "=== a VMM of no known pod exited with a failure; vmletd: {line}"
        ));
        failed.push(FailedVmm {
            pod: None,
            pid,
            evidence: vec![line],
        });
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_read_during_a_write_ends_at_its_last_complete_line() {
        let text = "2026-12-07T09:39:04.017067001Z stdout P a\n\
                    2026-12-07T09:39:04.017067001Z stdout F b\n\
                    2026-12-07T09:39:04.017067";
        let entries = parse_log(text);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].line, "ab");
        assert!(parse_log("2026-12-07T09:39:04.0").is_empty());
    }

    #[test]
    #[should_panic(expected = "malformed CRI log line")]
    fn a_cut_line_inside_a_log_is_malformed() {
        parse_log("2026-12-07T09:39:04.017067\n2026-12-07T09:39:04.017067001Z stdout F b\n");
    }

    #[test]
    fn failed_vmm_exits_are_found_in_the_daemon_log() {
        let log = "\
2026-12-04T10:00:00Z  INFO vmlet_agent::sandbox::vm: VMM exited: exit status 0 (as asked) pid=10
2026-12-04T10:00:01Z  WARN vmlet_agent::sandbox::vm: VMM exited: exit status 1 pid=11
2026-12-04T10:00:02Z  WARN \u{1b}[2mvmlet_agent::sandbox::vm\u{1b}[0m: VMM exited: killed by signal 11 (SIGSEGV) \u{1b}[3mpid\u{1b}[0m\u{1b}[2m=\u{1b}[0m12
2026-12-04T10:00:03Z  INFO vmlet_agent::sandbox::vm: VMM exited: killed by signal 9 (SIGKILL) (as asked) pid=13
2026-12-04T10:00:04Z  INFO vmlet_agent::sandbox::vm: adopted VMM exited pid=14
2026-12-04T10:00:05Z  INFO vmlet_agent: something else pid=15
";
        let pids: Vec<Option<u32>> = failed_vmm_exits(log).into_iter().map(|(p, _)| p).collect();
        assert_eq!(pids, vec![Some(11), Some(12)]);
    }

    #[test]
    fn a_vmm_log_ending_in_the_vmms_exit_line_is_a_failure() {
        // Last lines of real runs of vmlet-vmm (a missing kernel; a seccomp kill).
        let real = [
            "vmlet-vmm: error: cannot open kernel /nonexistent: No such file or directory (os error 2) (exit status 1)",
            "vmlet-vmm: error: seccomp: forbidden syscall 59 (execve) on a vCPU thread (exit status 159)",
        ];
        for last in real {
            let log = format!("2026-12-04T10:00:00Z  WARN vmlet_vmm: something\n{last}\n\n");
            assert!(vmm_log_says_failed(&log), "{log}");
        }
        let line = vmlet_vmm_api::ExitRecord {
            code: 101,
            reason: "panic in thread 'vcpu0' at vmm/src/x.rs:1:2: boom".into(),
        }
        .line();
        assert!(vmm_log_says_failed(&line));
        // An error logged on the way is no exit; a guest power-off is none either.
        assert!(!vmm_log_says_failed(
            "2026-12-04T10:00:00Z ERROR vmlet_vmm: transient\n2026-12-04T10:00:01Z  INFO vmlet_vmm: guest powered off\n"
        ));
        assert!(!vmm_log_says_failed(
            "2026-12-04T10:00:00Z ERROR vmlet_vmm: vCPU 0: KVM internal error\n"
        ));
        assert!(!vmm_log_says_failed(""));
    }

    #[test]
    fn pod_logs_are_mirrored_and_survive_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        let (pods, copies) = (dir.path().join("pods"), dir.path().join("copies"));
        std::fs::create_dir_all(pods.join("p1")).unwrap();
        std::fs::write(pods.join("p1/vmm.log"), "a\n").unwrap();
        mirror_pod_logs(&pods, &copies);
        std::fs::write(pods.join("p1/vmm.log"), "a\nb\n").unwrap();
        std::fs::write(pods.join("p1/console.log"), "c\n").unwrap();
        mirror_pod_logs(&pods, &copies);
        std::fs::remove_dir_all(pods.join("p1")).unwrap();
        mirror_pod_logs(&pods, &copies);
        assert_eq!(
            std::fs::read_to_string(copies.join("p1/vmm.log")).unwrap(),
            "a\nb\n"
        );
        assert_eq!(
            std::fs::read_to_string(copies.join("p1/console.log")).unwrap(),
            "c\n"
        );
        assert!(!copies.join("p1/pod.json").exists());
        // The record forgets its VMM's pid when the VMM is gone; the copies keep it.
        std::fs::create_dir_all(pods.join("p2")).unwrap();
        std::fs::write(pods.join("p2/pod.json"), r#"{"vmm_pid": 77}"#).unwrap();
        mirror_pod_logs(&pods, &copies);
        std::fs::write(pods.join("p2/pod.json"), r#"{"vmm_pid": null}"#).unwrap();
        mirror_pod_logs(&pods, &copies);
        mirror_pod_logs(&pods, &copies);
        assert_eq!(
            std::fs::read_to_string(copies.join("p2/vmm-pids")).unwrap(),
            "77\n"
        );
        // Nothing there at all is no error.
        mirror_pod_logs(&dir.path().join("none"), &copies);
        let none = dir.path().join("none");
        assert_eq!(report_failed_vmms(&none, &none, &none), []);
    }

    #[test]
    fn failed_vmms_are_reported_by_pod_and_expected_ones_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (pods, copies) = (dir.path().join("pods"), dir.path().join("copies"));
        // p1 is gone but copied; p2 still has its directory, and its VMM ended as asked;
        // p3's record no longer names its VMM, which the harness saw earlier.
        std::fs::create_dir_all(copies.join("p3")).unwrap();
        std::fs::write(copies.join("p3/pod.json"), r#"{"vmm_pid": null}"#).unwrap();
        std::fs::write(copies.join("p3/vmm-pids"), "4000004\n").unwrap();
        for (root, id, pid) in [(&copies, "p1", 4_000_001), (&pods, "p2", 4_000_002)] {
            std::fs::create_dir_all(root.join(id)).unwrap();
            std::fs::write(
                root.join(id).join("pod.json"),
                format!("{{\"vmm_pid\": {pid}}}"),
            )
            .unwrap();
        }
        let log = dir.path().join("vmletd.log");
        std::fs::write(
            &log,
            "\
x  WARN vmlet_agent::sandbox::vm: VMM exited: killed by signal 11 (SIGSEGV) pid=4000001
x  INFO vmlet_agent::sandbox::vm: VMM exited: exit status 0 (as asked) pid=4000002
x  WARN vmlet_agent::sandbox::vm: VMM exited: exit status 1 pid=4000003
x  WARN vmlet_agent::sandbox::vm: VMM exited: killed by signal 9 (SIGKILL) pid=4000004
",
        )
        .unwrap();
        let failed = report_failed_vmms(&pods, &copies, &log);
        let segv = FailedVmm {
            pod: Some("p1".into()),
            pid: Some(4_000_001),
            evidence: vec![
                "x  WARN vmlet_agent::sandbox::vm: VMM exited: killed by signal 11 (SIGSEGV) pid=4000001"
                    .into(),
            ],
        };
        let unknown = FailedVmm {
            pod: None,
            pid: Some(4_000_003),
            evidence: vec![
                "x  WARN vmlet_agent::sandbox::vm: VMM exited: exit status 1 pid=4000003".into(),
            ],
        };
        let killed = FailedVmm {
            pod: Some("p3".into()),
            pid: Some(4_000_004),
            evidence: vec![
                "x  WARN vmlet_agent::sandbox::vm: VMM exited: killed by signal 9 (SIGKILL) pid=4000004"
                    .into(),
            ],
        };
        assert_eq!(failed, [segv.clone(), killed, unknown.clone()]);
        assert_eq!(
            asked_vmm_exits(&std::fs::read_to_string(&log).unwrap()),
            [4_000_002].into()
        );

        let mut expected = ExpectedFailures::default();
        assert!(!expected.covers(&segv) && !expected.covers(&unknown));
        expected.pods.insert("p1".into());
        assert!(expected.covers(&segv) && !expected.covers(&unknown));
        expected.exits.push("exit status 1".into());
        assert!(expected.covers(&unknown));
        let other = ExpectedFailures {
            exits: vec!["SIGKILL".into()],
            ..Default::default()
        };
        assert!(!other.covers(&segv) && !other.covers(&unknown));
    }
}
