//! The runtime over the in-memory hypervisor (`sandbox::fake`): every cleanup path of
//! CreateContainer, a VM that dies, exit recording, recovery's reconcile, the warm
//! pool's take, refill and fallback, and exec timeouts, without booting a guest.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::TryRecvError;
use tonic::Code;
use vmlet_cri::image::ErrorKind;
use vmlet_cri::runtime::{
    ContainerConfig, ContainerState, EventKind, PodConfig, PodMetadata, PodState, RuntimeBackend,
};

use super::state::Settings;
use super::Runtime;
use crate::config::VmConfig;
use crate::images::{ImageManager, ImageManagerConfig};
use crate::network::pod::{NetworkMode, NetworkSettings};
use crate::sandbox::fake::{FakeHypervisor, FakeVm, GuestState};
use crate::sandbox::VmmExit;

const IMAGE: &str = "registry.test/busybox:1";

struct Harness {
    rt: Runtime,
    hv: Arc<FakeHypervisor>,
    settings: Settings,
    images: Arc<ImageManager>,
    dir: tempfile::TempDir,
}

pub(super) fn settings(dir: &Path, warm_pool: u32) -> Settings {
    Settings {
        vmm: "vmlet-vmm".into(),
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs"),
        state_dir: dir.join("state"),
        runtime_dir: dir.join("run"),
        vm: VmConfig {
            warm_pool,
            // The scratch disk is a real sparse ext4 file: keep it small.
            scratch_mib: 16,
            ..VmConfig::default()
        },
        network: NetworkSettings {
            mode: NetworkMode::None,
            ..NetworkSettings::default()
        },
        volumes: Default::default(),
        security: Default::default(),
        jail: Default::default(),
        cgroups: Default::default(),
        runtimes: Default::default(),
        metrics: Default::default(),
    }
}

async fn harness(warm_pool: u32) -> Harness {
    harness_with(warm_pool, 4, Duration::ZERO).await
}

/// A runtime whose pool keeps `warm_pool` VMs, that boots at most `boots` at once,
/// each boot taking `boot_time`.
async fn harness_with(warm_pool: u32, boots: u32, boot_time: Duration) -> Harness {
    let hv = FakeHypervisor::default();
    *hv.boot_time.lock().unwrap() = boot_time;
    harness_on(hv, |s| {
        s.vm.warm_pool = warm_pool;
        s.vm.max_concurrent_boots = boots;
    })
    .await
}

/// A runtime over `hv`, with the settings `edit` makes of the defaults (no warm pool).
async fn harness_on(hv: FakeHypervisor, edit: impl FnOnce(&mut Settings)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(
        ImageManager::open(ImageManagerConfig::new(dir.path().join("images")))
            .await
            .unwrap(),
    );
    images.add_test_image(IMAGE, Default::default());
    // The fake VMs read neither, but a pod's handler must name files that exist.
    for f in ["vmlinux", "initramfs"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let mut settings = settings(dir.path(), 0);
    edit(&mut settings);
    let hv = Arc::new(hv);
    let rt = Runtime::open_with(settings.clone(), images.clone(), hv.clone())
        .await
        .unwrap();
    Harness {
        rt,
        hv,
        settings,
        images,
        dir,
    }
}

impl Harness {
    /// The same state opened again, as after a restart, with VMs from `hv`.
    async fn reopen(&self, hv: Arc<FakeHypervisor>) -> Runtime {
        let rt = Runtime::open_with(self.settings.clone(), self.images.clone(), hv)
            .await
            .unwrap();
        rt.recovered().await;
        rt
    }

    fn log_dir(&self) -> String {
        self.dir.path().join("logs").display().to_string()
    }

    /// The same state opened again with `edit`ed settings.
    async fn reopen_with(
        &self,
        hv: Arc<FakeHypervisor>,
        edit: impl FnOnce(&mut Settings),
    ) -> Runtime {
        let mut settings = self.settings.clone();
        edit(&mut settings);
        let rt = Runtime::open_with(settings, self.images.clone(), hv)
            .await
            .unwrap();
        rt.recovered().await;
        rt
    }

    /// A pod's directory in the state directory.
    fn pod_dir(&self, pod: &str) -> std::path::PathBuf {
        self.dir.path().join("state/pods").join(pod)
    }

    /// Its control socket path (how fake VMs are found).
    fn control(&self, pod: &str) -> std::path::PathBuf {
        self.dir.path().join("run/pods").join(pod).join("ctl")
    }

    /// Container and log-position records of a pod.
    fn records(&self, pod: &str) -> usize {
        std::fs::read_dir(self.pod_dir(pod).join("containers"))
            .unwrap()
            .count()
    }

    /// The pod's image slots in memory: (serial, image ID, users).
    fn slots(&self, pod: &str) -> Vec<(String, Option<String>, u64)> {
        let verbose: serde_json::Value =
            serde_json::from_str(&self.rt.pod(pod).unwrap().verbose_json).unwrap();
        verbose["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["serial"].as_str().unwrap().to_owned(),
                    s["image_id"].as_str().map(str::to_owned),
                    s["users"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// The image slot a container uses.
    fn slot_of(&self, container: &str) -> String {
        let verbose: serde_json::Value =
            serde_json::from_str(&self.rt.container(container).unwrap().verbose_json).unwrap();
        verbose["slot"].as_str().unwrap().to_owned()
    }

    /// Adds image `name` (an empty block image) and a container config that uses it.
    fn image_config(&self, container: &str, name: &str) -> ContainerConfig {
        self.images.add_test_image(name, Default::default());
        ContainerConfig {
            image: name.into(),
            ..container_config(container)
        }
    }

    /// Whether the warm pool reports `n` VMs ready.
    fn warm_ready(&self, n: usize) -> bool {
        self.rt
            .health()
            .verbose_json
            .contains(&format!("\"ready\":{n}"))
    }

    async fn pod(&self, name: &str) -> (String, FakeVm) {
        let id = self
            .rt
            .run_pod(pod_config(name, &self.log_dir()))
            .await
            .unwrap();
        let vm = self.hv.vm(&id).expect("the pod's fake VM");
        (id, vm)
    }

    async fn running(&self, pod: &str, name: &str) -> String {
        let id = self
            .rt
            .create_container(pod, container_config(name))
            .await
            .unwrap();
        self.rt.start_container(&id).await.unwrap();
        id
    }

    fn pod_files(&self) -> Vec<std::path::PathBuf> {
        ["state/pods", "run/pods"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(self.dir.path().join(d))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .map(|e| e.path())
            .collect()
    }
}

fn pod_config(name: &str, log_dir: &str) -> PodConfig {
    PodConfig {
        metadata: PodMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "unit".into(),
            attempt: 0,
        },
        log_directory: log_dir.into(),
        ..Default::default()
    }
}

fn container_config(name: &str) -> ContainerConfig {
    ContainerConfig {
        name: name.into(),
        image: IMAGE.into(),
        command: vec!["sh".into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Polls `cond` for up to 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stopped_events(
    rx: &mut tokio::sync::broadcast::Receiver<vmlet_cri::runtime::ContainerEvent>,
    id: &str,
) -> usize {
    let mut n = 0;
    loop {
        match rx.try_recv() {
            Ok(e) if e.container_id == id && e.kind == EventKind::Stopped => n += 1,
            Ok(_) => {}
            Err(TryRecvError::Lagged(_)) => {}
            Err(_) => return n,
        }
    }
}

#[tokio::test]
async fn a_pod_runs_in_a_configured_vm_and_leaves_nothing_when_removed() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("web").await;
    assert_eq!(h.rt.pod(&pod).unwrap().state, PodState::Ready);
    let calls = vm.calls();
    assert!(
        calls.contains(&"ConfigureGuest") && calls.contains(&"WriteFile"),
        "{calls:?}"
    );
    // The same name again is refused while the pod exists.
    let again =
        h.rt.run_pod(pod_config("web", &h.log_dir()))
            .await
            .unwrap_err();
    assert_eq!(again.kind, ErrorKind::AlreadyExists, "{again}");
    h.rt.remove_pod(&pod).await.unwrap();
    assert!(!vm.running(), "the VM was stopped");
    assert!(h.pod_files().is_empty(), "{:?}", h.pod_files());
    assert!(h.rt.pods().is_empty());
}

#[tokio::test]
async fn a_vm_that_dies_makes_its_pod_not_ready_and_its_containers_exited() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("crashy").await;
    let mut events = h.rt.subscribe();
    let c = h.running(&pod, "app").await;
    vm.die(VmmExit::Signal(libc::SIGSEGV));
    eventually("the pod is not ready", || {
        h.rt.pod(&pod).unwrap().state == PodState::NotReady
    })
    .await;
    let info = h.rt.container(&c).unwrap();
    assert_eq!(info.state, ContainerState::Exited);
    assert_eq!((info.exit_code, info.reason.as_str()), (255, "VMExited"));
    assert!(info.message.contains("SIGSEGV"), "{}", info.message);
    let verbose = h.rt.pod(&pod).unwrap().verbose_json;
    assert!(
        verbose.contains("SIGSEGV") && verbose.contains("consoleTail"),
        "{verbose}"
    );
    assert_eq!(stopped_events(&mut events, &c), 1);
    // Stop and remove work, twice, and leave nothing.
    h.rt.stop_pod(&pod).await.unwrap();
    h.rt.stop_pod(&pod).await.unwrap();
    h.rt.remove_pod(&pod).await.unwrap();
    assert!(h.pod_files().is_empty(), "{:?}", h.pod_files());
    assert!(h.rt.containers().is_empty());
}

#[tokio::test]
async fn a_stopped_pod_is_not_mistaken_for_a_dead_one() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("calm").await;
    let c = h.running(&pod, "app").await;
    h.rt.stop_pod(&pod).await.unwrap();
    assert_eq!(vm.shutdowns.load(std::sync::atomic::Ordering::Relaxed), 1);
    let info = h.rt.container(&c).unwrap();
    assert_eq!(info.state, ContainerState::Exited);
    assert_ne!(info.reason, "VMExited", "{info:?}");
    assert!(!h.rt.pod(&pod).unwrap().verbose_json.contains("SIGKILL"));
}

#[tokio::test]
async fn create_container_failures_leave_nothing_and_free_the_name() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("failing").await;
    let containers_dir = h
        .dir
        .path()
        .join("state/pods")
        .join(&pod)
        .join("containers");
    let records = || std::fs::read_dir(&containers_dir).unwrap().count();

    // An image the node does not have.
    let mut cfg = container_config("app");
    cfg.image = "registry.test/none:1".into();
    let e = h.rt.create_container(&pod, cfg).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    // The slot swap fails: the slot is not trusted any more.
    vm.guest
        .lock()
        .unwrap()
        .fail
        .insert("SwapDrive", Code::Internal);
    let e =
        h.rt.create_container(&pod, container_config("app"))
            .await
            .unwrap_err();
    assert!(e.message.contains("swap_drive"), "{e}");
    // The slot is free again and holds no image: the next container swaps its file in.
    let slots = h.slots(&pod);
    assert_eq!(slots[0], ("slot0".to_owned(), None, 0), "{slots:?}");
    assert!(
        slots
            .iter()
            .all(|(_, image, users)| image.is_none() && *users == 0),
        "{slots:?}"
    );
    vm.guest.lock().unwrap().fail.clear();

    // The guest refuses the container.
    vm.guest
        .lock()
        .unwrap()
        .fail
        .insert("CreateContainer", Code::InvalidArgument);
    let e =
        h.rt.create_container(&pod, container_config("app"))
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    vm.guest.lock().unwrap().fail.clear();

    // The log cannot be opened (its directory is a file): the guest's container is
    // removed again.
    let mut cfg = container_config("app");
    cfg.log_path = "file-not-dir/app.log".into();
    std::fs::create_dir_all(h.dir.path().join("logs")).unwrap();
    std::fs::write(h.dir.path().join("logs/file-not-dir"), b"").unwrap();
    let e = h.rt.create_container(&pod, cfg).await.unwrap_err();
    assert!(e.message.contains("file-not-dir"), "{e}");
    assert!(vm.calls().contains(&"RemoveContainer"));
    assert!(vm.guest.lock().unwrap().containers.is_empty());

    assert_eq!(records(), 0, "records left behind");
    assert!(h.rt.containers().is_empty());
    // Every slot is free again and the name can be used.
    let id =
        h.rt.create_container(&pod, container_config("app"))
            .await
            .unwrap();
    assert_eq!(records(), 2, "a container record and its log position");
    h.rt.remove_container(&id).await.unwrap();
    assert_eq!(records(), 0);
}

#[tokio::test]
async fn slots_are_shared_by_image_and_run_out_with_a_clear_error() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("slots").await;
    // Two containers of one image share its slot: one swap.
    let a =
        h.rt.create_container(&pod, container_config("a"))
            .await
            .unwrap();
    let _b =
        h.rt.create_container(&pod, container_config("b"))
            .await
            .unwrap();
    assert_eq!(vm.swaps.lock().unwrap().len(), 1);
    // Each other image takes a slot of its own, until there are none.
    let slots = h.settings.vm.image_slots as usize;
    for i in 1..slots {
        let name = format!("registry.test/other{i}:1");
        h.images.add_test_image(&name, Default::default());
        let mut cfg = container_config(&format!("o{i}"));
        cfg.image = name;
        h.rt.create_container(&pod, cfg).await.unwrap();
    }
    h.images
        .add_test_image("registry.test/last:1", Default::default());
    let mut cfg = container_config("last");
    cfg.image = "registry.test/last:1".into();
    let e = h.rt.create_container(&pod, cfg.clone()).await.unwrap_err();
    assert!(e.message.contains(&format!("all {slots}")), "{e}");
    // A slot freed by removal serves the next image.
    h.rt.remove_container(&a).await.unwrap();
    h.rt.remove_container(&_b).await.unwrap();
    h.rt.create_container(&pod, cfg).await.unwrap();
}

#[tokio::test]
async fn an_exit_is_recorded_at_once_and_reported_once_even_with_a_stuck_log() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("exits").await;
    let mut events = h.rt.subscribe();
    // The log copy never ends: the guest's output read hangs.
    vm.guest.lock().unwrap().silent_reads = true;
    let c =
        h.rt.create_container(&pod, container_config("stuck"))
            .await
            .unwrap();
    h.rt.start_container(&c).await.unwrap();
    let exited = Instant::now();
    vm.exit_container(&c, 3, "Error");
    eventually("the exit is recorded", || {
        h.rt.container(&c).unwrap().state == ContainerState::Exited
    })
    .await;
    // Held back at most by the bounded log drain.
    assert!(exited.elapsed() < super::container::LOG_DRAIN + Duration::from_secs(5));
    let info = h.rt.container(&c).unwrap();
    assert_eq!((info.exit_code, info.reason.as_str()), (3, "Error"));
    let verbose: serde_json::Value = serde_json::from_str(&info.verbose_json).unwrap();
    assert!(verbose["exitSeenAtNs"].as_i64().unwrap() > 0, "{verbose}");
    // A second report of the same exit (a stop racing the watcher) changes nothing.
    h.rt.stop_container(&c, Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stopped_events(&mut events, &c), 1);
    assert_eq!(h.rt.container(&c).unwrap().exit_code, 3);
}

#[tokio::test]
async fn recovery_reconciles_containers_with_what_the_guest_says() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("survivor").await;
    let running = h.running(&pod, "running").await;
    let ended = h.running(&pod, "ended").await;
    let forgotten = h.running(&pod, "forgotten").await;
    let (gone_pod, _) = h.pod("gone").await;
    let gone_ctr = h.running(&gone_pod, "lost").await;

    // The next daemon finds the first VM alive (its guest knows two containers, one
    // exited) and the second gone.
    let hv = Arc::new(FakeHypervisor::default());
    let mut guest = GuestState::default();
    let status =
        |state: vmlet_proto::agent::ProcessState, code: i32| vmlet_proto::agent::ProcessStatus {
            state: state as i32,
            exit_code: code,
            reason: if code == 0 {
                String::new()
            } else {
                "Error".into()
            },
            ..Default::default()
        };
    guest.containers.insert(
        running.clone(),
        status(vmlet_proto::agent::ProcessState::Running, 0),
    );
    guest.containers.insert(
        ended.clone(),
        status(vmlet_proto::agent::ProcessState::Exited, 7),
    );
    let control = h.dir.path().join("run/pods").join(&pod).join("ctl");
    hv.prepare_adoptable(&control, guest);
    let rt = h.reopen(hv.clone()).await;

    let state = |id: &str| rt.container(id).unwrap();
    assert_eq!(rt.pod(&pod).unwrap().state, PodState::Ready);
    assert_eq!(state(&running).state, ContainerState::Running);
    assert_eq!(
        (state(&ended).state, state(&ended).exit_code),
        (ContainerState::Exited, 7)
    );
    assert_eq!(
        (state(&forgotten).state, state(&forgotten).reason.as_str()),
        (ContainerState::Exited, "Unknown")
    );
    assert_eq!(rt.pod(&gone_pod).unwrap().state, PodState::NotReady);
    assert_eq!(state(&gone_ctr).reason, "VMExited");
    assert!(hv
        .strays_killed
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.to_string_lossy().contains(&gone_pod)));
    // The re-adopted container is followed: its exit reaches the record.
    let vm = hv.vm(&pod).unwrap();
    vm.exit_container(&running, 0, "Completed");
    eventually("the re-adopted container's exit", || {
        state(&running).state == ContainerState::Exited
    })
    .await;
}

#[tokio::test]
async fn recovery_keeps_containers_running_when_the_guest_cannot_list_them() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("quiet").await;
    let c = h.running(&pod, "app").await;
    let hv = Arc::new(FakeHypervisor::default());
    let mut guest = GuestState::default();
    guest.fail.insert("ListContainers", Code::Unavailable);
    guest.containers.insert(
        c.clone(),
        vmlet_proto::agent::ProcessStatus {
            state: vmlet_proto::agent::ProcessState::Running as i32,
            ..Default::default()
        },
    );
    hv.prepare_adoptable(&h.dir.path().join("run/pods").join(&pod).join("ctl"), guest);
    let rt = h.reopen(hv.clone()).await;
    assert_eq!(rt.container(&c).unwrap().state, ContainerState::Running);
    hv.vm(&pod).unwrap().exit_container(&c, 0, "Completed");
    eventually("the exit is still followed", || {
        rt.container(&c).unwrap().state == ContainerState::Exited
    })
    .await;
}

#[tokio::test]
async fn the_warm_pool_hands_out_live_vms_and_refills() {
    let h = harness(1).await;
    eventually("the pool fills", || h.hv.all().len() == 1).await;
    eventually("the warm VM is ready", || {
        h.rt.health().verbose_json.contains("\"ready\":1")
    })
    .await;
    let warm = h.hv.all()[0].clone();
    let (pod, vm) = h.pod("warm").await;
    assert_eq!(vm.control, warm.control, "the pod took the warm VM");
    assert!(pod.len() == 64 && warm.control.to_string_lossy().contains(&pod));
    eventually("the pool refills", || h.hv.all().len() == 2).await;
    // A pod of another size boots its own VM.
    let mut big = pod_config("big", &h.log_dir());
    big.memory_mib = Some(1024);
    let other = h.rt.run_pod(big).await.unwrap();
    assert!(h.hv.vm(&other).is_some());
    assert_eq!(h.rt.pod(&other).unwrap().state, PodState::Ready);
}

/// What a metrics scrape reads matches what was done: pods and containers by state,
/// the pool, boots, and the phases of a warm and a fresh start.
#[tokio::test]
async fn the_figures_count_what_the_runtime_did() {
    let h = harness(1).await;
    eventually("the warm VM is ready", || {
        h.rt.health().verbose_json.contains("\"ready\":1")
    })
    .await;
    let (warm, _) = h.pod("warm").await;
    let mut big = pod_config("big", &h.log_dir());
    big.memory_mib = Some(1024);
    let fresh = h.rt.run_pod(big).await.unwrap();
    h.running(&warm, "app").await;
    h.rt.create_container(&fresh, container_config("idle"))
        .await
        .unwrap();
    h.rt.stop_pod(&fresh).await.unwrap();
    let scraped = h.rt.scrape().await;
    assert_eq!(scraped.pods, [("ready", 1), ("notready", 1)]);
    assert_eq!(
        scraped.containers,
        [
            ("created", 0),
            ("running", 1),
            ("exited", 1),
            ("unknown", 0)
        ]
    );
    let pool = &scraped.warm_pools[0];
    assert_eq!((pool.handler.as_str(), pool.target), ("", 1));
    // The ready pod's VMM, asked for its counters (the fake counts its drive swaps).
    assert_eq!(scraped.vmms.len(), 1);
    let vmm = &scraped.vmms[0];
    assert_eq!(
        (vmm.pod.id.as_str(), vmm.pod.name.as_str()),
        (warm.as_str(), "warm")
    );
    let counters = vmm.counters.as_ref().unwrap();
    assert_eq!(counters.exits["mmio_write"], 1, "{counters:?}");
    let text = h.settings.metrics.encode(scraped).unwrap();
    let scratch = format!(
        r#"vmlet_vmm_block_read_bytes_total{{pod_id="{warm}",pod_name="warm",pod_namespace="unit",drive="scratch"}}"#
    );
    let sample = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok())
    };
    for (series, want) in [
        (r#"vmlet_pod_starts_total{vm="warm"}"#, 1.0),
        (r#"vmlet_pod_starts_total{vm="fresh"}"#, 1.0),
        (r#"vmlet_vm_boots_total{result="failed"}"#, 0.0),
        (
            r#"vmlet_pod_start_phase_duration_seconds_count{vm="fresh",phase="boot"}"#,
            1.0,
        ),
        (
            r#"vmlet_pod_start_phase_duration_seconds_count{vm="fresh",phase="queue"}"#,
            1.0,
        ),
        (
            r#"vmlet_pod_start_phase_duration_seconds_count{vm="warm",phase="configure"}"#,
            1.0,
        ),
        (r#"vmlet_warm_pool_target{handler=""}"#, 1.0),
        (scratch.as_str(), 0.0),
    ] {
        assert_eq!(sample(series), Some(want), "{series} in\n{text}");
    }
    // The pool's first VM and the fresh pod's, at least (the refill may be booting).
    let boots = sample(r#"vmlet_vm_boots_total{result="ok"}"#).unwrap();
    assert!(boots >= 2.0, "{text}");
    // A warm start has no boot of its own; no network without CNI.
    assert!(!text.contains(r#"{vm="warm",phase="boot"}"#), "{text}");
    assert!(!text.contains(r#"phase="network""#), "{text}");
}

/// A pod of a RuntimeClass handler gets that handler's kernel, arguments and size,
/// from its own warm pool; an unknown handler is refused before anything is made.
#[tokio::test]
async fn a_pod_of_a_runtime_handler_gets_its_vm_and_pool() {
    let hv = FakeHypervisor::default();
    let h = harness_on(hv, |s| {
        let kernel = s.kernel.with_file_name("vmlinux-big");
        std::fs::write(&kernel, "").unwrap();
        s.runtimes.insert(
            "big".into(),
            crate::config::RuntimeClassConfig {
                vcpus: Some(2),
                mem_mib: Some(512),
                kernel: Some(kernel),
                kernel_args: Some("quiet big".into()),
                warm_pool: 1,
                ..Default::default()
            },
        );
        s.runtimes.insert(
            "broken".into(),
            crate::config::RuntimeClassConfig {
                kernel: Some("/nonexistent/vmlinux".into()),
                ..Default::default()
            },
        );
    })
    .await;
    // Only the handler with a warm pool boots ahead.
    eventually("big's warm VM is ready", || {
        h.rt.health().verbose_json.contains("\"ready\":1")
    })
    .await;
    let health = h.rt.health();
    assert_eq!(health.runtime_handlers, ["", "big", "broken"]);
    let warm = h.hv.all()[0].clone();
    let mut config = pod_config("web", &h.log_dir());
    config.runtime_handler = "big".into();
    let (pod, vm) = {
        let id = h.rt.run_pod(config).await.unwrap();
        (id.clone(), h.hv.vm(&id).unwrap())
    };
    assert_eq!(vm.control, warm.control, "the pod took big's warm VM");
    let first = h.hv.boot_commands.lock().unwrap()[0].clone();
    assert!(first.kernel.ends_with("vmlinux-big"), "{first:?}");
    assert_eq!((first.vcpus, first.mem_mib), (2, 512));
    assert_eq!(first.kernel_args, "quiet big");
    let info = h.rt.pod(&pod).unwrap();
    assert_eq!(info.config.runtime_handler, "big");

    // A default pod boots the default kernel at the default size.
    let (_, _) = h.pod("plain").await;
    let cmds = h.hv.boot_commands.lock().unwrap().clone();
    let plain = cmds
        .iter()
        .find(|c| c.kernel == h.settings.kernel)
        .expect("a boot of the default kernel");
    assert_eq!(
        (plain.vcpus, plain.mem_mib, plain.kernel_args.as_str()),
        (1, 256, "quiet")
    );

    // Unknown handlers and missing kernels fail cleanly, leaving nothing.
    let boots = h.hv.boot_commands.lock().unwrap().len();
    let mut config = pod_config("gv", &h.log_dir());
    config.runtime_handler = "gvisor".into();
    let e = h.rt.run_pod(config).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("no runtime handler \"gvisor\""), "{e}");
    let mut config = pod_config("br", &h.log_dir());
    config.runtime_handler = "broken".into();
    let e = h.rt.run_pod(config).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(e.message.contains("/nonexistent/vmlinux"), "{e}");
    assert_eq!(h.hv.boot_commands.lock().unwrap().len(), boots);
    assert_eq!(h.rt.pods().len(), 2);
}

#[tokio::test]
async fn a_silent_warm_vm_is_replaced_by_a_fresh_boot() {
    let h = harness(1).await;
    eventually("the warm VM is ready", || {
        h.rt.health().verbose_json.contains("\"ready\":1")
    })
    .await;
    let warm = h.hv.all()[0].clone();
    warm.guest.lock().unwrap().silent = true;
    let (pod, vm) = h.pod("fallback").await;
    assert_ne!(vm.control, warm.control);
    assert!(!warm.running(), "the silent warm VM was killed");
    assert_eq!(h.rt.pod(&pod).unwrap().state, PodState::Ready);
    assert!(h.rt.health().verbose_json.contains("\"failed\":1"));
    assert_eq!(kept_consoles(&h), 1);
    // When the fresh boot fails too, the error names both causes.
    h.rt.remove_pod(&pod).await.unwrap();
    eventually("the warm VM is ready", || {
        h.rt.health().verbose_json.contains("\"ready\":1")
    })
    .await;
    h.hv.all().last().unwrap().guest.lock().unwrap().silent = true;
    *h.hv.fail_boot.lock().unwrap() = Some("no kernel today".into());
    let e =
        h.rt.run_pod(pod_config("fallback", &h.log_dir()))
            .await
            .unwrap_err();
    assert!(
        e.message.contains("Health") && e.message.contains("no kernel today"),
        "{}",
        e.message
    );
    // Both failed VMs' consoles are kept: the warm one's and the fresh boot's.
    assert_eq!(kept_consoles(&h), 3);
}

/// How many consoles of failed VMs vmletd kept.
fn kept_consoles(h: &Harness) -> usize {
    std::fs::read_dir(h.dir.path().join("state/failed-vms"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".console.log"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_warm_vm_that_fails_adoption_falls_back_and_both_causes_are_named() {
    let h = harness(1).await;
    eventually("the warm VM is ready", || {
        h.rt.health().verbose_json.contains("\"ready\":1")
    })
    .await;
    let warm = h.hv.all()[0].clone();
    // It answers the ping but fails ConfigureGuest; the fresh boot fails too.
    warm.guest
        .lock()
        .unwrap()
        .fail
        .insert("ConfigureGuest", Code::Internal);
    *h.hv.fail_boot.lock().unwrap() = Some("no kernel today".into());
    let e =
        h.rt.run_pod(pod_config("unlucky", &h.log_dir()))
            .await
            .unwrap_err();
    let msg = e.message.clone();
    assert!(
        msg.contains("ConfigureGuest") && msg.contains("no kernel today"),
        "{msg}"
    );
    assert!(!warm.running());
    assert!(h.rt.pods().is_empty());
    // Nothing is left: while boots fail the pool's refill makes no VM either, so no
    // pod directory remains and the warm VM was the only VM ever started.
    eventually("no pod files", || h.pod_files().is_empty()).await;
    assert_eq!(h.hv.all().len(), 1, "only the warm VM was ever started");
    // The name is free again; the pod's VM is the one VM running besides, at most,
    // a VM the pool booted since (which is no pod).
    *h.hv.fail_boot.lock().unwrap() = None;
    let pod =
        h.rt.run_pod(pod_config("unlucky", &h.log_dir()))
            .await
            .unwrap();
    assert_eq!(h.rt.pod(&pod).unwrap().state, PodState::Ready);
    let running: Vec<_> = h.hv.all().into_iter().filter(|v| v.running()).collect();
    let (mine, others): (Vec<_>, Vec<_>) = running
        .iter()
        .partition(|v| v.control.to_string_lossy().contains(&pod));
    assert_eq!(mine.len(), 1, "{running:?}");
    assert!(others.len() <= 1, "{running:?}");
    assert_eq!(h.rt.pods().len(), 1);
}

#[tokio::test]
async fn an_exec_that_times_out_is_killed_and_reaped() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("exec").await;
    let c = h.running(&pod, "app").await;
    vm.guest.lock().unwrap().exec_hangs = true;
    let e =
        h.rt.exec_sync(
            &c,
            vec!["sleep".into(), "1000".into()],
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e}");
    let calls = vm.calls();
    assert!(calls.contains(&"SignalProcess"), "{calls:?}");
    // Without a hang the output comes back.
    vm.guest.lock().unwrap().exec_hangs = false;
    let out = h.rt.exec_sync(&c, vec!["true".into()], None).await.unwrap();
    assert_eq!(out.exit_code, 0);
}

#[tokio::test]
async fn boots_queue_at_the_configured_bound() {
    let h = harness_with(0, 2, Duration::from_millis(300)).await;
    let runs = (0..5).map(|i| h.rt.run_pod(pod_config(&format!("q{i}"), "")));
    let ids = futures_util::future::join_all(runs).await;
    assert!(ids.iter().all(Result::is_ok), "{ids:?}");
    assert_eq!(
        h.hv.most_booting.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "at most vm.max_concurrent_boots guests boot at once"
    );
}

#[tokio::test]
async fn an_empty_pool_is_waited_for_by_one_call_and_others_boot_their_own() {
    // The pool's first VM takes a while to boot: the first call waits for it, the
    // second boots its own.
    let h = harness_with(1, 4, Duration::from_millis(800)).await;
    eventually("the pool boots", || {
        h.hv.booting.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let (a, b) = tokio::join!(
        h.rt.run_pod(pod_config("first", "")),
        h.rt.run_pod(pod_config("second", ""))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let first_vm = h.hv.all()[0].control.clone();
    let took_warm = [&a, &b]
        .iter()
        .filter(|id| first_vm.to_string_lossy().contains(id.as_str()))
        .count();
    assert_eq!(
        took_warm, 1,
        "exactly one call took the VM the pool was booting"
    );
    assert_eq!(h.hv.all().len(), 2, "the other booted its own");
}

#[tokio::test]
async fn a_duplicate_container_name_is_refused_and_the_first_container_kept() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("dup").await;
    let first =
        h.rt.create_container(&pod, container_config("app"))
            .await
            .unwrap();
    let e =
        h.rt.create_container(&pod, container_config("app"))
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    assert!(e.message.contains(&first), "{e}");
    // Nothing of the second attempt: one container, one slot user, one swap.
    assert_eq!(h.rt.containers().len(), 1);
    assert_eq!(h.records(&pod), 2);
    assert_eq!(vm.swaps.lock().unwrap().len(), 1);
    assert_eq!(h.slots(&pod)[0].2, 1);
    assert_eq!(
        vm.calls()
            .iter()
            .filter(|c| **c == "CreateContainer")
            .count(),
        1
    );
    // The first is untouched; another attempt of the name is another container.
    assert_eq!(
        h.rt.container(&first).unwrap().state,
        ContainerState::Created
    );
    let retry = ContainerConfig {
        attempt: 1,
        ..container_config("app")
    };
    h.rt.create_container(&pod, retry).await.unwrap();
}

#[tokio::test]
async fn a_pod_that_is_not_ready_takes_no_container() {
    let h = harness(0).await;
    // Its VM just died: the pod is still recorded ready, but the VM does not run.
    let (dead, vm) = h.pod("dead").await;
    vm.die(VmmExit::Signal(libc::SIGKILL));
    let e =
        h.rt.create_container(&dead, container_config("app"))
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(
        e.message
            .contains(&format!("pod sandbox {dead} is not ready")),
        "{e}"
    );
    eventually("the pod is not ready", || {
        h.rt.pod(&dead).unwrap().state == PodState::NotReady
    })
    .await;
    let e =
        h.rt.create_container(&dead, container_config("app"))
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(e.message.contains("stopped or its VM exited"), "{e}");
    // A stopped pod, the same.
    let (stopped, stopped_vm) = h.pod("stopped").await;
    h.rt.stop_pod(&stopped).await.unwrap();
    let e =
        h.rt.create_container(&stopped, container_config("app"))
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    for (pod, vm) in [(&dead, &vm), (&stopped, &stopped_vm)] {
        assert!(!vm.calls().contains(&"CreateContainer"));
        assert!(vm.swaps.lock().unwrap().is_empty());
        assert_eq!(h.records(pod), 0);
    }
    assert!(h.rt.containers().is_empty());
}

#[tokio::test]
async fn a_request_that_makes_no_process_takes_nothing() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("nocmd").await;
    // The test image has no Entrypoint or Cmd, and the request names no command.
    let cfg = ContainerConfig {
        command: Vec::new(),
        ..container_config("app")
    };
    let e = h.rt.create_container(&pod, cfg).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.starts_with("no command"), "{e}");
    assert!(vm.swaps.lock().unwrap().is_empty());
    assert!(h
        .slots(&pod)
        .iter()
        .all(|(_, image, users)| image.is_none() && *users == 0));
    assert_eq!(h.records(&pod), 0);
    assert!(!vm.calls().contains(&"CreateContainer"));
    // The name is free.
    h.rt.create_container(&pod, container_config("app"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failed_record_write_removes_what_was_written_and_frees_the_slot() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("store").await;
    // The pod record cannot be replaced (a directory took its place): the container
    // and log-position records are written first, then that fails.
    let record = h.pod_dir(&pod).join("pod.json");
    let saved = std::fs::read(&record).unwrap();
    std::fs::remove_file(&record).unwrap();
    std::fs::create_dir(&record).unwrap();
    let e =
        h.rt.create_container(&pod, container_config("app"))
            .await
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(e.message.contains("pod.json"), "{e}");
    assert_eq!(h.records(&pod), 0, "records left behind");
    // The slot is free; its file was swapped in, so it holds the image.
    let slots = h.slots(&pod);
    assert_eq!(slots[0].2, 0, "{slots:?}");
    assert!(slots[0].1.is_some(), "{slots:?}");
    assert!(!vm.calls().contains(&"CreateContainer"));
    assert!(h.rt.containers().is_empty());
    std::fs::remove_dir(&record).unwrap();
    std::fs::write(&record, saved).unwrap();
    // The name is free, and the slot serves the same image again without a swap.
    let id =
        h.rt.create_container(&pod, container_config("app"))
            .await
            .unwrap();
    assert_eq!(h.slot_of(&id), "slot0");
    assert_eq!(vm.swaps.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_never_used_slot_is_taken_first_and_one_holding_the_image_reused_without_a_swap() {
    let h = harness_on(FakeHypervisor::default(), |s| s.vm.image_slots = 2).await;
    let (pod, vm) = h.pod("prefs").await;
    let swaps = || vm.swaps.lock().unwrap().clone();
    // A's container takes slot0, then goes: slot0 is free and still holds A.
    let a =
        h.rt.create_container(&pod, container_config("a"))
            .await
            .unwrap();
    assert_eq!(h.slot_of(&a), "slot0");
    h.rt.remove_container(&a).await.unwrap();
    let a_id = h.slots(&pod)[0].1.clone();
    assert!(a_id.is_some());
    // Image B takes the never-used slot1, not the free slot0 that holds A.
    let b =
        h.rt.create_container(&pod, h.image_config("b", "registry.test/b:1"))
            .await
            .unwrap();
    assert_eq!(h.slot_of(&b), "slot1");
    assert_eq!(swaps().len(), 2);
    assert_eq!(swaps()[1].0, "slot1");
    // Image A again: slot0 still holds it, so no swap.
    let a2 =
        h.rt.create_container(&pod, container_config("a2"))
            .await
            .unwrap();
    assert_eq!(h.slot_of(&a2), "slot0");
    assert_eq!(swaps().len(), 2, "{:?}", swaps());
    assert_eq!(h.slots(&pod)[0], ("slot0".to_owned(), a_id, 1));
    // With no never-used slot left, a third image takes a free one that holds another
    // image, with a swap.
    h.rt.remove_container(&a2).await.unwrap();
    let c =
        h.rt.create_container(&pod, h.image_config("c", "registry.test/c:1"))
            .await
            .unwrap();
    assert_eq!(h.slot_of(&c), "slot0");
    assert_eq!(swaps().len(), 3);
    assert_eq!(swaps()[2].0, "slot0");
}

#[tokio::test]
async fn recovery_keeps_a_pod_whose_guest_does_not_answer_and_takes_it_over_later() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("mute").await;
    let c = h.running(&pod, "app").await;
    let running = || vmlet_proto::agent::ProcessStatus {
        state: vmlet_proto::agent::ProcessState::Running as i32,
        ..Default::default()
    };
    // The next daemon finds the VMM alive but its guest silent.
    let hv = Arc::new(FakeHypervisor::default());
    let mut guest = GuestState {
        silent: true,
        ..Default::default()
    };
    guest.containers.insert(c.clone(), running());
    hv.prepare_adoptable(&h.control(&pod), guest);
    let rt = h.reopen(hv.clone()).await;
    let stray = hv.vm(&pod).expect("the adopt attempt found the VMM");
    assert!(
        stray.running(),
        "the VMM of the silent guest is left running"
    );
    assert!(hv.strays_killed.lock().unwrap().is_empty());
    assert_eq!(rt.pod(&pod).unwrap().state, PodState::Ready);
    let info = rt.container(&c).unwrap();
    assert_eq!(
        (info.state, info.exit_code),
        (ContainerState::Unknown, 0),
        "unknown, not exited"
    );
    // The guest answers again: the pod is taken over, the container followed.
    let mut guest = GuestState::default();
    guest.containers.insert(c.clone(), running());
    hv.prepare_adoptable(&h.control(&pod), guest);
    eventually("the guest is taken over", || {
        rt.container(&c).unwrap().state == ContainerState::Running
    })
    .await;
    let vm = hv.all().into_iter().last().unwrap();
    vm.exit_container(&c, 0, "Completed");
    eventually("the exit is followed", || {
        rt.container(&c).unwrap().state == ContainerState::Exited
    })
    .await;
    rt.remove_pod(&pod).await.unwrap();
    assert!(h.pod_files().is_empty(), "{:?}", h.pod_files());
}

#[tokio::test]
async fn stopping_a_pod_whose_guest_does_not_answer_kills_its_vmm() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("mute").await;
    let c = h.running(&pod, "app").await;
    let hv = Arc::new(FakeHypervisor::default());
    hv.prepare_adoptable(
        &h.control(&pod),
        GuestState {
            silent: true,
            ..Default::default()
        },
    );
    let rt = h.reopen(hv.clone()).await;
    assert_eq!(rt.container(&c).unwrap().state, ContainerState::Unknown);
    rt.stop_pod(&pod).await.unwrap();
    assert!(hv.strays_killed.lock().unwrap().contains(&h.control(&pod)));
    assert!(!hv.vm(&pod).unwrap().running());
    assert_eq!(rt.container(&c).unwrap().state, ContainerState::Exited);
    rt.remove_pod(&pod).await.unwrap();
    assert!(h.pod_files().is_empty(), "{:?}", h.pod_files());
}

/// Recovery runs in the background: the runtime opens at once, and a call for a pod
/// still being taken over waits for it.
#[tokio::test]
async fn calls_for_a_pod_being_recovered_wait_for_it() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("slow").await;
    let c = h.running(&pod, "app").await;
    let hv = FakeHypervisor::default();
    let mut guest = GuestState::default();
    guest.containers.insert(
        c.clone(),
        vmlet_proto::agent::ProcessStatus {
            state: vmlet_proto::agent::ProcessState::Running as i32,
            ..Default::default()
        },
    );
    // The guest's ListContainers fails: recovery keeps the recorded state.
    guest.fail.insert("ListContainers", Code::Unavailable);
    hv.prepare_adoptable(&h.control(&pod), guest);
    let hv = Arc::new(hv);
    let rt = Runtime::open_with(h.settings.clone(), h.images.clone(), hv.clone())
        .await
        .unwrap();
    // Listed at once, as recorded.
    assert!(rt.pod(&pod).is_ok());
    assert_eq!(rt.container(&c).unwrap().state, ContainerState::Running);
    // ExecSync waits for the VM to be taken over instead of failing.
    let out = rt.exec_sync(&c, vec!["true".into()], None).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(rt.container(&c).unwrap().state, ContainerState::Running);
}

#[tokio::test]
async fn recovery_removes_pods_caught_creating_and_warm_vms() {
    let h = harness(1).await;
    eventually("the warm VM is ready", || h.warm_ready(1)).await;
    let warm = h.hv.all()[0].control.clone();
    let warm_id = warm
        .parent()
        .and_then(|d| d.file_name())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // A pod whose record says it was still being created.
    let (creating, _) = h.pod("half").await;
    let record = h.pod_dir(&creating).join("pod.json");
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    r["phase"] = "Creating".into();
    std::fs::write(&record, r.to_string()).unwrap();

    let hv = Arc::new(FakeHypervisor::default());
    let rt = h.reopen_with(hv.clone(), |s| s.vm.warm_pool = 0).await;
    assert!(rt.pods().is_empty(), "{:?}", rt.pods());
    let killed = hv.strays_killed.lock().unwrap().clone();
    for (id, control) in [(&creating, h.control(&creating)), (&warm_id, warm)] {
        assert!(killed.contains(&control), "{id}: {killed:?}");
        assert!(!h.pod_dir(id).exists(), "{id} left its files");
        assert!(!control.parent().unwrap().exists(), "{id} left its sockets");
    }
    // The half-created pod's name is free.
    rt.run_pod(pod_config("half", &h.log_dir())).await.unwrap();
}

#[tokio::test]
async fn recovery_removes_guest_containers_no_record_knows() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("ghosts").await;
    let c = h.running(&pod, "app").await;
    let hv = Arc::new(FakeHypervisor::default());
    let running = vmlet_proto::agent::ProcessStatus {
        state: vmlet_proto::agent::ProcessState::Running as i32,
        ..Default::default()
    };
    let mut guest = GuestState::default();
    guest.containers.insert(c.clone(), running.clone());
    // A container whose CreateContainer never returned to the previous daemon.
    guest.containers.insert("ghost".into(), running);
    hv.prepare_adoptable(&h.control(&pod), guest);
    let rt = h.reopen(hv.clone()).await;
    let vm = hv.vm(&pod).unwrap();
    let left: Vec<String> = vm
        .guest
        .lock()
        .unwrap()
        .containers
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        left,
        vec![c.clone()],
        "the stray is removed, the known one kept"
    );
    assert!(vm.calls().contains(&"RemoveContainer"));
    assert_eq!(rt.container(&c).unwrap().state, ContainerState::Running);
    assert_eq!(rt.containers().len(), 1);
}

#[tokio::test]
async fn an_idle_warm_vm_that_dies_is_removed_and_replaced() {
    let h = harness(1).await;
    eventually("the warm VM is ready", || h.warm_ready(1)).await;
    let warm = h.hv.all()[0].clone();
    let dir = warm.control.parent().unwrap().to_owned();
    warm.die(VmmExit::Signal(libc::SIGSEGV));
    eventually("a replacement boots", || h.hv.all().len() == 2).await;
    eventually("the replacement is ready", || h.warm_ready(1)).await;
    assert!(h.hv.all()[1].running());
    eventually("the dead VM's files are removed", || !dir.exists()).await;
    // A pod gets the replacement, not the dead VM.
    let (_, vm) = h.pod("after").await;
    assert_eq!(vm.control, h.hv.all()[1].control);
}

/// Polls `cond`, yielding instead of sleeping, so that a paused clock stands still
/// while other tasks run; for up to 10 s of real time.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_refill_whose_boots_fail_waits_longer_after_each_failure() {
    let hv = FakeHypervisor::default();
    *hv.fail_boot.lock().unwrap() = Some("no kernel today".into());
    let h = harness_on(hv, |s| s.vm.warm_pool = 1).await;
    let attempts = || h.hv.boot_attempts.lock().unwrap().len();
    // The refill waits 5 s after the first failure, then 10 s, then 20 s.
    for (n, wait) in [(1, 5), (2, 10), (3, 20)] {
        until(&format!("boot attempt {n}"), || attempts() == n).await;
        until("the refill task waits", || {
            h.rt.health().verbose_json.contains("\"booting\":false")
        })
        .await;
        tokio::time::advance(Duration::from_secs(wait) - Duration::from_millis(100)).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // A refill that woke up would be booting now.
        assert!(
            h.rt.health().verbose_json.contains("\"booting\":false"),
            "attempt {} came before {wait} s",
            n + 1
        );
        assert_eq!(attempts(), n);
        tokio::time::advance(Duration::from_millis(200)).await;
    }
    until("boot attempt 4", || attempts() == 4).await;
    let at = h.hv.boot_attempts.lock().unwrap().clone();
    let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, vec![5, 10, 20]);
}

#[tokio::test]
async fn shutdown_kills_the_warm_vm_being_booted() {
    let h = harness_with(1, 4, Duration::from_millis(500)).await;
    eventually("the pool boots", || {
        h.hv.booting.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    h.rt.shutdown().await;
    let all = h.hv.all();
    assert_eq!(all.len(), 1, "the boot in flight finished");
    assert!(!all[0].running(), "and its VM was killed");
    assert!(h.pod_files().is_empty(), "{:?}", h.pod_files());
    assert!(h.rt.health().verbose_json.contains("\"ready\":0"));
}

/// A kubelet-like pod directory under the harness: etc-hosts, a configMap in the
/// kubelet's atomic-writer layout, an emptyDir and a termination log.
fn kubelet_pod(h: &Harness) -> std::path::PathBuf {
    let pod = h
        .dir
        .path()
        .join("kubelet/pods/6f1c3a52-8d0e-4c2b-9a57-1f3e2d4c5b6a");
    let cm = pod.join("volumes/kubernetes.io~configmap/config");
    for d in [
        cm.join("..2026_12_05_10_00_00.1"),
        pod.join("volumes/kubernetes.io~empty-dir/cache"),
        pod.join("containers/app"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(pod.join("etc-hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    std::fs::write(pod.join("containers/app/7c1e"), "").unwrap();
    std::fs::write(cm.join("..2026_12_05_10_00_00.1/mode"), "one").unwrap();
    std::os::unix::fs::symlink("..2026_12_05_10_00_00.1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/mode", cm.join("mode")).unwrap();
    pod
}

/// Updates the configMap as the kubelet does: a new timestamped directory, then the
/// `..data` symlink swapped by rename, then the old directory removed.
fn update_configmap(pod: &Path, ts: &str, value: &str) {
    let cm = pod.join("volumes/kubernetes.io~configmap/config");
    let old = std::fs::read_link(cm.join("..data")).unwrap();
    std::fs::create_dir(cm.join(ts)).unwrap();
    std::fs::write(cm.join(ts).join("mode"), value).unwrap();
    std::os::unix::fs::symlink(ts, cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(cm.join(old)).unwrap();
}

fn mount(
    host: std::path::PathBuf,
    container: &str,
    readonly: bool,
) -> vmlet_cri::runtime::MountConfig {
    vmlet_cri::runtime::MountConfig {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// The mounts a kubelet gives a container of `pod` (as `kubelet_pod` lays it out).
fn kubelet_container(pod: &Path) -> ContainerConfig {
    let mut c = container_config("app");
    c.mounts = vec![
        mount(
            pod.join("volumes/kubernetes.io~configmap/config"),
            "/config",
            true,
        ),
        mount(
            pod.join("volumes/kubernetes.io~empty-dir/cache"),
            "/cache",
            false,
        ),
        mount(pod.join("etc-hosts"), "/etc/hosts", false),
        mount(
            pod.join("containers/app/7c1e"),
            "/dev/termination-log",
            false,
        ),
    ];
    c.annotations.insert(
        "io.kubernetes.container.terminationMessagePath".into(),
        "/dev/termination-log".into(),
    );
    c
}

/// The value of the configMap key as the guest's copy has it (through `..data`).
fn guest_value(vm: &FakeVm, prefix: &str) -> Option<String> {
    let g = vm.guest.lock().unwrap();
    let (_, entries) = g
        .volumes
        .iter()
        .find(|(n, e)| n.starts_with(prefix) && e.iter().any(|e| e.path == "..data"))?;
    let data = entries.iter().find(|e| e.path == "..data")?.target.clone();
    let file = entries.iter().find(|e| e.path == format!("{data}/mode"))?;
    Some(String::from_utf8_lossy(&file.data).into_owned())
}

#[tokio::test]
async fn kubelet_volumes_reach_the_guest_stay_in_sync_and_the_termination_log_comes_back() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("volumes").await;
    let kdir = kubelet_pod(&h);
    let c =
        h.rt.create_container(&pod, kubelet_container(&kdir))
            .await
            .unwrap();
    h.rt.start_container(&c).await.unwrap();

    let names: Vec<String> = vm.guest.lock().unwrap().volumes.keys().cloned().collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for prefix in ["copy-", "empty-", "tlog-"] {
        assert!(names.iter().any(|n| n.starts_with(prefix)), "{names:?}");
    }
    assert_eq!(guest_value(&vm, "copy-").as_deref(), Some("one"));
    let info = h.rt.container(&c).unwrap();
    assert_eq!(info.config.mounts.len(), 4);
    let verbose: serde_json::Value = serde_json::from_str(&info.verbose_json).unwrap();
    let classes: Vec<&str> = verbose["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["class"].as_str().unwrap_or("memoryDir"))
        .collect();
    assert!(
        classes.contains(&"copied") && classes.contains(&"terminationLog"),
        "{verbose}"
    );

    // An update the kubelet's way reaches the guest's copy.
    update_configmap(&kdir, "..2026_12_05_10_05_00.2", "two");
    eventually("the configMap update reaches the guest", || {
        guest_value(&vm, "copy-").as_deref() == Some("two")
    })
    .await;

    // The container writes its termination log and exits: the host file has it
    // once the exit is recorded.
    {
        let mut g = vm.guest.lock().unwrap();
        let tlog = g
            .volumes
            .iter_mut()
            .find(|(n, _)| n.starts_with("tlog-"))
            .unwrap()
            .1;
        tlog[0].data = b"the end".to_vec();
    }
    vm.exit_container(&c, 1, "Error");
    eventually("the exit is recorded", || {
        h.rt.container(&c).unwrap().state == ContainerState::Exited
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(kdir.join("containers/app/7c1e")).unwrap(),
        "the end"
    );

    // Removal takes the copies; the emptyDir lives as long as the pod.
    h.rt.remove_container(&c).await.unwrap();
    let names: Vec<String> = vm.guest.lock().unwrap().volumes.keys().cloned().collect();
    assert!(
        names.len() == 1 && names[0].starts_with("empty-"),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_bad_mount_is_refused_by_name_and_leaves_no_volume_behind() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("bad-mounts").await;
    let kdir = kubelet_pod(&h);
    let mut cfg = kubelet_container(&kdir);
    cfg.mounts.push(mount(
        kdir.join("volumes/kubernetes.io~secret/gone"),
        "/secret",
        true,
    ));
    let e = h.rt.create_container(&pod, cfg).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(
        e.message.contains("/secret") && e.message.contains("does not exist"),
        "{}",
        e.message
    );

    // The guest fails a copy midway: what was made for the container is removed.
    vm.guest
        .lock()
        .unwrap()
        .fail
        .insert("SyncVolume", Code::Internal);
    let mut cfg = kubelet_container(&kdir);
    cfg.mounts.rotate_left(1); // the emptyDir is made before the failing copy
    let e = h.rt.create_container(&pod, cfg).await.unwrap_err();
    assert!(e.message.contains("SyncVolume"), "{}", e.message);
    assert!(vm.guest.lock().unwrap().volumes.is_empty());
    assert_eq!(h.records(&pod), 0);
    // Nothing stays reserved: the same container can be made once the guest works.
    vm.guest.lock().unwrap().fail.clear();
    h.rt.create_container(&pod, kubelet_container(&kdir))
        .await
        .unwrap();
    assert_eq!(vm.guest.lock().unwrap().volumes.len(), 4);
}

#[tokio::test]
async fn a_configmap_changed_while_vmletd_was_down_reaches_the_guest_after_restart() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("restart-volumes").await;
    let kdir = kubelet_pod(&h);
    let c =
        h.rt.create_container(&pod, kubelet_container(&kdir))
            .await
            .unwrap();
    h.rt.start_container(&c).await.unwrap();
    update_configmap(&kdir, "..2026_12_05_11_00_00.3", "three");

    // The next daemon finds the VM alive; its guest still has the old copy.
    let hv = Arc::new(FakeHypervisor::default());
    let mut guest = GuestState::default();
    guest.containers.insert(
        c.clone(),
        vmlet_proto::agent::ProcessStatus {
            state: vmlet_proto::agent::ProcessState::Running as i32,
            ..Default::default()
        },
    );
    hv.prepare_adoptable(&h.control(&pod), guest);
    let _rt = h.reopen(hv.clone()).await;
    let vm = hv.vm(&pod).unwrap();
    eventually("the update made while down reaches the guest", || {
        guest_value(&vm, "copy-").as_deref() == Some("three")
    })
    .await;
}

#[tokio::test]
async fn an_image_volume_takes_a_slot_and_is_shared_by_the_pods_containers() {
    let h = harness(0).await;
    let (pod, vm) = h.pod("image-volumes").await;
    h.images
        .add_test_image("registry.test/data:1", Default::default());
    let with_volume = |name: &str| {
        let mut c = container_config(name);
        c.mounts = vec![vmlet_cri::runtime::MountConfig {
            container_path: "/models".into(),
            image: "registry.test/data:1".into(),
            readonly: true,
            ..Default::default()
        }];
        c
    };
    let a = h.rt.create_container(&pod, with_volume("a")).await.unwrap();
    let b = h.rt.create_container(&pod, with_volume("b")).await.unwrap();
    let images: Vec<String> = vm
        .guest
        .lock()
        .unwrap()
        .volumes
        .keys()
        .filter(|n| n.starts_with("image-"))
        .cloned()
        .collect();
    assert_eq!(images.len(), 1, "one guest volume for the image");
    // Two slots in use: the containers' image and the volume's, each by both.
    let used: Vec<u64> = h
        .slots(&pod)
        .iter()
        .map(|s| s.2)
        .filter(|u| *u > 0)
        .collect();
    assert_eq!(used, [2, 2]);
    // The image cannot be removed while a container mounts it.
    assert!(h.images.remove("registry.test/data:1").await.is_err());
    h.rt.remove_container(&a).await.unwrap();
    assert_eq!(vm.guest.lock().unwrap().volumes.len(), 1);
    h.rt.remove_container(&b).await.unwrap();
    assert!(vm.guest.lock().unwrap().volumes.is_empty());
    assert!(h.slots(&pod).iter().all(|s| s.2 == 0));
    // A writable image volume is refused.
    let mut bad = with_volume("c");
    bad.mounts[0].readonly = false;
    let e = h.rt.create_container(&pod, bad).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn recovery_keeps_a_log_whose_position_file_is_missing() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("lost-position").await;
    let c = h.running(&pod, "app").await;
    let log = std::path::Path::new(&h.log_dir()).join("app.log");
    let text = "2026-01-01T00:00:00.000000000Z stdout F before the restart\n";
    std::fs::write(&log, text).unwrap();
    let position = h
        .dir
        .path()
        .join("state/pods")
        .join(&pod)
        .join("containers")
        .join(format!("{c}.log.json"));
    std::fs::remove_file(&position).unwrap();

    let hv = Arc::new(FakeHypervisor::default());
    let mut guest = GuestState::default();
    guest.containers.insert(
        c.clone(),
        vmlet_proto::agent::ProcessStatus {
            state: vmlet_proto::agent::ProcessState::Running as i32,
            ..Default::default()
        },
    );
    hv.prepare_adoptable(&h.control(&pod), guest);
    let rt = h.reopen(hv.clone()).await;
    assert_eq!(rt.container(&c).unwrap().state, ContainerState::Running);
    assert!(
        std::fs::read_to_string(&log).unwrap().starts_with(text),
        "the log was cut"
    );
}

/// StopContainer while StartContainer is in flight waits for it and then stops the
/// container, instead of finding it "created" and leaving it to run.
#[tokio::test]
async fn stop_container_waits_for_a_start_in_flight() {
    let h = harness(0).await;
    let (pod, _vm) = h.pod("race").await;
    let id =
        h.rt.create_container(&pod, container_config("app"))
            .await
            .unwrap();
    let rt = h.rt.clone();
    let started = id.clone();
    let start = tokio::spawn(async move { rt.start_container(&started).await });
    // One thread: the start runs until it waits for the guest's answer.
    tokio::task::yield_now().await;
    h.rt.stop_container(&id, Duration::from_secs(10))
        .await
        .unwrap();
    start.await.unwrap().unwrap();
    let info = h.rt.container(&id).unwrap();
    assert_eq!(
        (info.state, info.exit_code),
        (ContainerState::Exited, 128 + libc::SIGTERM)
    );
}

use super::util::lock;

/// The template directories made so far.
fn templates(h: &Harness) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(h.dir.path().join("state/templates")) else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("template.json").exists())
        .collect();
    dirs.sort();
    dirs
}

#[tokio::test]
async fn pods_start_from_the_template_of_their_shape() {
    let hv = FakeHypervisor::default();
    let h = harness_on(hv, |s| {
        s.vm.warm_pool = 1;
        // Any file will do as the VMM binary the templates are keyed by.
        s.vmm = s.kernel.clone();
    })
    .await;
    // The first warm VM boots and is made the template of the default shape.
    eventually("the warm VM is ready", || {
        h.rt.health().verbose_json.contains("\"ready\":1")
    })
    .await;
    eventually("the template is made", || templates(&h).len() == 1).await;
    let origin = h.hv.all()[0].clone();
    assert_eq!(lock(&origin.guest).snapshots, 1);
    let first = lock(&h.hv.boot_commands)[0].clone();
    assert!(first.restore.is_none() && first.snapshot_dir.is_some());

    // The pool refills by restoring it; the pod after the origin gets that VM, told
    // it was restored.
    let (_, vm) = h.pod("first").await;
    assert_eq!(vm.control, origin.control, "the origin is a warm VM as any");
    eventually("the pool refills", || h.hv.all().len() == 2).await;
    let refill = lock(&h.hv.boot_commands)[1].clone();
    assert_eq!(refill.restore.as_ref(), Some(&templates(&h)[0]));
    let (_, restored) = h.pod("second").await;
    assert_eq!(lock(&restored.guest).restored.len(), 1);
    assert_eq!(lock(&restored.guest).restored[0].entropy.len(), 64);
    assert!(lock(&origin.guest).restored.is_empty());

    // A pod of another shape boots, and a VM made for its template follows it.
    let mut big = pod_config("big", &h.log_dir());
    big.memory_mib = Some(1024);
    let booted = h.rt.run_pod(big.clone()).await.unwrap();
    let cmd = |pod: &str| {
        lock(&h.hv.boot_commands)
            .iter()
            .find(|c| c.control.to_string_lossy().contains(pod))
            .cloned()
            .unwrap()
    };
    assert!(cmd(&booted).restore.is_none());
    eventually("the second template is made", || templates(&h).len() == 2).await;
    big.metadata.name = "big2".into();
    big.metadata.uid = "big2".into();
    let restored = h.rt.run_pod(big).await.unwrap();
    assert!(cmd(&restored).restore.is_some());
    assert_eq!(lock(&h.hv.vm(&restored).unwrap().guest).restored.len(), 1);
}

#[tokio::test]
async fn a_template_that_fails_to_restore_is_removed_and_the_pod_boots() {
    let hv = FakeHypervisor::default();
    let h = harness_on(hv, |s| s.vmm = s.kernel.clone()).await;
    // No warm pool: the first pod boots, and a VM made for the template follows it.
    let (_, _) = h.pod("first").await;
    eventually("the template is made", || templates(&h).len() == 1).await;
    *lock(&h.hv.fail_restore) = true;
    let (pod, _) = h.pod("second").await;
    assert_eq!(h.rt.pod(&pod).unwrap().state, PodState::Ready);
    let cmds: Vec<_> = lock(&h.hv.boot_commands)
        .iter()
        .filter(|c| c.control.to_string_lossy().contains(&pod))
        .cloned()
        .collect();
    assert_eq!(cmds.len(), 2, "a restore, then a boot");
    assert!(cmds[0].restore.is_some() && cmds[1].restore.is_none());
    // The bad template was removed; a new one is made in the background.
    eventually("the template is made again", || {
        templates(&h).len() == 1 && lock(&h.hv.boot_commands).len() == 5
    })
    .await;
}
