//! RunPodSandbox within the caller's deadline, over the in-memory hypervisor: the warm
//! VM's ping, the wait for the pool and for a boot slot, and the fresh boot each get
//! what is left of it; a fallback that cannot finish is not started; a caller that
//! goes away leaves nothing behind. Also: every path that records a container's exit
//! notes when vmletd learnt of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmlet_cri::image::{BackendError, ErrorKind};
use vmlet_cri::runtime::{
    ContainerConfig, ContainerState, PodConfig, PodMetadata, PodState, RuntimeBackend,
};

use super::state::Settings;
use super::Runtime;
use crate::config::VmConfig;
use crate::images::{ImageManager, ImageManagerConfig};
use crate::network::pod::{NetworkMode, NetworkSettings};
use crate::sandbox::fake::FakeHypervisor;
use crate::sandbox::VmmExit;

const IMAGE: &str = "registry.test/busybox:1";

struct Harness {
    rt: Runtime,
    hv: Arc<FakeHypervisor>,
    dir: tempfile::TempDir,
}

/// A runtime whose pool keeps `warm_pool` VMs, that boots at most `boots` at once,
/// each boot taking `boot_time`.
async fn harness(warm_pool: u32, boots: u32, boot_time: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(
        ImageManager::open(ImageManagerConfig::new(dir.path().join("images")))
            .await
            .unwrap(),
    );
    images.add_test_image(IMAGE, Default::default());
    for f in ["vmlinux", "initramfs"] {
        std::fs::write(dir.path().join(f), "").unwrap();
    }
    let settings = Settings {
        vmm: "vmlet-vmm".into(),
        kernel: dir.path().join("vmlinux"),
        initramfs: dir.path().join("initramfs"),
        state_dir: dir.path().join("state"),
        runtime_dir: dir.path().join("run"),
        vm: VmConfig {
            warm_pool,
            max_concurrent_boots: boots,
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
    };
    let hv = Arc::new(FakeHypervisor::default());
    *hv.boot_time.lock().unwrap() = boot_time;
    let rt = Runtime::open_with(settings, images, hv.clone())
        .await
        .unwrap();
    Harness { rt, hv, dir }
}

impl Harness {
    fn pod_files(&self) -> Vec<PathBuf> {
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

    fn warm_ready(&self) -> bool {
        self.rt.health().verbose_json.contains("\"ready\":1")
    }

    /// RunPodSandbox of pod `name` that must be answered within `within`.
    async fn run_within(&self, name: &str, within: Duration) -> Result<String, BackendError> {
        self.rt
            .run_pod_until(config(name), Some(Instant::now() + within))
            .await
    }
}

fn config(name: &str) -> PodConfig {
    PodConfig {
        metadata: PodMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "unit".into(),
            attempt: 0,
        },
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

#[tokio::test]
async fn a_silent_warm_vm_with_no_time_left_for_a_fresh_boot_fails_with_deadline_exceeded() {
    // Boots take 600 ms here (the pool's own boot is the estimate).
    let h = harness(1, 4, Duration::from_millis(600)).await;
    eventually("the warm VM is ready", || h.warm_ready()).await;
    let warm = h.hv.all()[0].clone();
    warm.guest.lock().unwrap().silent = true;
    let start = Instant::now();
    let e = h
        .run_within("late", Duration::from_millis(1000))
        .await
        .unwrap_err();
    // The ping got what the deadline left (1 s), not its own 3 s.
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e}");
    assert!(
        e.message.contains("the warm VM failed")
            && e.message.contains("Health")
            && e.message.contains("none was started"),
        "{}",
        e.message
    );
    assert!(!warm.running(), "the silent warm VM was killed");
    assert!(h.rt.pods().is_empty());
    // The name is free again: with time enough the pod starts.
    let pod = h.run_within("late", Duration::from_secs(30)).await.unwrap();
    assert_eq!(h.rt.pod(&pod).unwrap().state, PodState::Ready);
}

#[tokio::test]
async fn a_fresh_boot_gets_only_what_the_deadline_leaves() {
    let h = harness(0, 4, Duration::ZERO).await;
    let pod = h
        .run_within("quick", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(h.rt.pod(&pod).unwrap().state, PodState::Ready);
    let given = h.hv.boot_timeouts.lock().unwrap()[0];
    assert!(given <= Duration::from_secs(20), "{given:?}");
    // Without a deadline a boot has vm.boot_timeout_secs.
    h.rt.run_pod(config("patient")).await.unwrap();
    let given = h.hv.boot_timeouts.lock().unwrap()[1];
    assert_eq!(
        given,
        Duration::from_secs(VmConfig::default().boot_timeout_secs)
    );
    // A boot slower than the deadline is cut short by it, and leaves nothing.
    *h.hv.boot_time.lock().unwrap() = Duration::from_secs(5);
    let e = h
        .run_within("slow", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e}");
    assert!(
        e.message.contains("deadline ended the boot"),
        "{}",
        e.message
    );
    assert_eq!(h.rt.pods().len(), 2);
    assert_eq!(
        h.pod_files().len(),
        4,
        "two pods, a state and a run directory each"
    );
}

#[tokio::test]
async fn the_wait_for_a_boot_slot_ends_with_the_deadline() {
    let h = harness(0, 1, Duration::from_millis(1500)).await;
    let (first, second) = tokio::join!(h.rt.run_pod(config("first")), async {
        // The first call holds the only boot slot by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.run_within("second", Duration::from_millis(300)).await
    });
    first.unwrap();
    let e = second.unwrap_err();
    assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e}");
    assert!(
        e.message.contains("waiting for a boot slot"),
        "{}",
        e.message
    );
    assert_eq!(h.rt.pods().len(), 1);
    assert_eq!(
        h.hv.boot_timeouts.lock().unwrap().len(),
        1,
        "no second boot"
    );
}

#[tokio::test]
async fn the_wait_for_the_pools_boot_ends_with_the_deadline() {
    let h = harness(1, 4, Duration::from_millis(1500)).await;
    eventually("the pool boots", || {
        h.hv.booting.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let e = h
        .run_within("hurried", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e}");
    assert!(
        e.message.contains("before a VM could be booted"),
        "{}",
        e.message
    );
    // No one is left counted as waiting: the next call takes the pool's VM.
    let pod = h.rt.run_pod(config("patient")).await.unwrap();
    let first = h.hv.all()[0].control.clone();
    assert!(first.to_string_lossy().contains(&pod), "{first:?} {pod}");
}

#[tokio::test]
async fn a_caller_that_goes_away_leaves_nothing_behind() {
    let h = harness(0, 4, Duration::from_millis(400)).await;
    // The boot fails after the caller gave up: the detached start still undoes it.
    *h.hv.fail_boot.lock().unwrap() = Some("no kernel today".into());
    let gave_up = tokio::time::timeout(Duration::from_millis(100), h.rt.run_pod(config("gone")));
    assert!(gave_up.await.is_err(), "the call was still under way");
    eventually("the failed start is undone", || h.pod_files().is_empty()).await;
    // The name is free once the start has ended.
    *h.hv.fail_boot.lock().unwrap() = None;
    let gave_up = tokio::time::timeout(Duration::from_millis(100), h.rt.run_pod(config("gone")));
    assert!(gave_up.await.is_err(), "the call was still under way");
    // A start that succeeds after its caller gave up is a listed pod, not a stray VM.
    eventually("the pod is listed", || h.rt.pods().len() == 1).await;
    let pod = h.rt.pods()[0].id.clone();
    assert_eq!(h.rt.pod(&pod).unwrap().state, PodState::Ready);
    let vms = h.hv.all();
    assert_eq!(vms.len(), 1, "one VM booted");
    assert!(vms[0].running() && vms[0].control.to_string_lossy().contains(&pod));
    h.rt.remove_pod(&pod).await.unwrap();
    assert!(h.pod_files().is_empty(), "{:?}", h.pod_files());
}

/// Verbose ContainerStatus of `id`, once it has exited.
async fn exited_info(rt: &Runtime, id: &str) -> serde_json::Value {
    eventually("the container exited", || {
        rt.container(id).unwrap().state == ContainerState::Exited
    })
    .await;
    serde_json::from_str(&rt.container(id).unwrap().verbose_json).unwrap()
}

#[tokio::test]
async fn every_path_that_records_an_exit_notes_when_it_was_seen() {
    let h = harness(0, 4, Duration::ZERO).await;
    let pod = h.rt.run_pod(config("exits")).await.unwrap();
    let mut configs = ["stopped", "dies"].map(|name| ContainerConfig {
        name: name.into(),
        image: IMAGE.into(),
        command: vec!["sh".into()],
        ..Default::default()
    });
    let mut ids = Vec::new();
    for c in configs.iter_mut() {
        let id = h.rt.create_container(&pod, c.clone()).await.unwrap();
        h.rt.start_container(&id).await.unwrap();
        ids.push(id);
    }
    // StopContainer.
    let before = super::util::now_ns();
    h.rt.stop_container(&ids[0], Duration::ZERO).await.unwrap();
    // A VM that died.
    h.hv.vm(&pod).unwrap().die(VmmExit::Signal(libc::SIGKILL));
    for id in &ids {
        let info = exited_info(&h.rt, id).await;
        let seen = info["exitSeenAtNs"].as_i64().unwrap();
        let recorded = info["finishedAtNs"].as_i64().unwrap();
        assert!(seen >= before && recorded >= seen, "{id}: {info}");
    }
}
