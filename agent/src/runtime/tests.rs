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

fn settings(dir: &Path, warm_pool: u32) -> Settings {
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
    }
}

async fn harness(warm_pool: u32) -> Harness {
    harness_with(warm_pool, 4, Duration::ZERO).await
}

/// A runtime whose pool keeps `warm_pool` VMs, that boots at most `boots` at once,
/// each boot taking `boot_time`.
async fn harness_with(warm_pool: u32, boots: u32, boot_time: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(
        ImageManager::open(ImageManagerConfig::new(dir.path().join("images")))
            .await
            .unwrap(),
    );
    images.add_test_image(IMAGE, Default::default());
    let mut settings = settings(dir.path(), warm_pool);
    settings.vm.max_concurrent_boots = boots;
    let hv = Arc::new(FakeHypervisor::default());
    *hv.boot_time.lock().unwrap() = boot_time;
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
        Runtime::open_with(self.settings.clone(), self.images.clone(), hv)
            .await
            .unwrap()
    }

    fn log_dir(&self) -> String {
        self.dir.path().join("logs").display().to_string()
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
    assert!(h.dir.path().join("state/failed-vms").is_dir());
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
