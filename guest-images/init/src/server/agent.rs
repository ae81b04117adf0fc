//! The `Agent` service: each call checks its request, asks the container manager or
//! the guest configuration to act, and maps errors to gRPC statuses.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use vmlet_proto::agent::{self as pb, agent_server::Agent};

use super::status::{self, deadline};
use crate::container::{self, Container, Manager, State};
use crate::guest::{self, netconf, restore, volumes};

/// How long a blocking call waits without a client deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// Sent back this much before the client's deadline, so the answer still reaches it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);
/// Grace period of `Shutdown` without one in the request.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The service.
#[derive(Debug)]
pub struct AgentService {
    manager: Result<Arc<Manager>, String>,
    booted: Instant,
}

impl AgentService {
    /// A service over `manager` (or the reason there is none: containers cannot run).
    pub fn new(manager: Result<Arc<Manager>, String>) -> Self {
        AgentService {
            manager,
            booted: Instant::now(),
        }
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<container::Process>, Status> {
        self.manager()?
            .get(id)
            .and_then(|c| c.process(exec_id))
            .map_err(status::container)
    }

    fn manager(&self) -> Result<&Manager, Status> {
        self.manager.as_deref().map_err(|e| {
            Status::failed_precondition(format!("the guest cannot run containers: {e}"))
        })
    }
}

/// How long a blocking call may wait: until shortly before the client's deadline, so
/// that the answer reaches it in time (a tenth of the time, at least
/// [`DEADLINE_MARGIN`], at most 2 s).
fn wait_budget<T>(req: &Request<T>) -> Duration {
    deadline(req).map_or(DEFAULT_WAIT, |d| {
        let margin = (d / 10).clamp(DEADLINE_MARGIN, Duration::from_secs(2));
        d.saturating_sub(margin)
    })
}

fn unix_ns(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn process_status(s: &container::Status) -> pb::ProcessStatus {
    pb::ProcessStatus {
        state: match s.state {
            State::Created => pb::ProcessState::Created,
            State::Running => pb::ProcessState::Running,
            State::Exited => pb::ProcessState::Exited,
        } as i32,
        pid: u32::try_from(s.pid.as_raw()).unwrap_or(0),
        exit_code: s.exit.map_or(0, |e| e.code),
        signal: s
            .exit
            .and_then(|e| e.signal)
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0),
        reason: s.reason.clone(),
        message: s.message.clone(),
        created_at_ns: unix_ns(Some(s.created_at)),
        started_at_ns: unix_ns(s.started_at),
        finished_at_ns: unix_ns(s.finished_at),
    }
}

fn container_status(c: &Container) -> pb::ContainerStatus {
    pb::ContainerStatus {
        container_id: c.id.clone(),
        main: Some(process_status(&c.main.status())),
        exec_ids: c.exec_ids(),
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn interface(i: pb::Interface) -> Result<netconf::InterfaceConfig, Status> {
    Ok(netconf::InterfaceConfig {
        mac: netconf::parse_mac(&i.mac).map_err(invalid)?,
        new_mac: if i.new_mac.is_empty() {
            None
        } else {
            Some(netconf::parse_mac(&i.new_mac).map_err(invalid)?)
        },
        name: (!i.name.is_empty()).then_some(i.name),
        addresses: i
            .addresses
            .iter()
            .map(|a| a.parse().map_err(invalid))
            .collect::<Result<_, _>>()?,
        mtu: (i.mtu != 0).then_some(i.mtu),
    })
}

fn route(r: pb::Route) -> Result<netconf::RouteConfig, Status> {
    Ok(netconf::RouteConfig {
        destination: r.destination.parse().map_err(invalid)?,
        gateway: if r.gateway.is_empty() {
            None
        } else {
            Some(r.gateway.parse().map_err(|_| {
                Status::invalid_argument(format!("gateway {:?} is not an IP address", r.gateway))
            })?)
        },
        interface_mac: if r.interface_mac.is_empty() {
            None
        } else {
            Some(netconf::parse_mac(&r.interface_mac).map_err(invalid)?)
        },
    })
}

/// The 1-minute load and the number of tasks from /proc/loadavg
/// ("0.20 0.18 0.12 1/80 11206": the 4th field is runnable/total).
fn loadavg(text: &str) -> (f64, u32) {
    let mut fields = text.split_whitespace();
    let load = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let tasks = fields
        .nth(2)
        .and_then(|v| v.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .unwrap_or(0);
    (load, tasks)
}

fn guest_stats() -> pb::GuestStats {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    // USER_HZ is 100 on every Linux we build for.
    let cpu_usec = read("/proc/stat")
        .lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4) // idle, iowait
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum::<u64>()
                * 10_000
        })
        .unwrap_or(0);
    let (load, processes) = loadavg(&read("/proc/loadavg"));
    pb::GuestStats {
        timestamp_ns: unix_ns(Some(SystemTime::now())),
        cpu_usage_usec: cpu_usec,
        memory_total_bytes: mem("MemTotal:"),
        memory_available_bytes: mem("MemAvailable:"),
        load_average_1m: load,
        processes,
        init_rss_bytes: read("/proc/self/status")
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024,
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(
        &self,
        _req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            protocol: vmlet_proto::PROTOCOL_VERSION.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.booted.elapsed().as_secs_f64(),
            containers: self
                .manager
                .as_ref()
                .map_or(0, |m| u32::try_from(m.list().len()).unwrap_or(u32::MAX)),
        }))
    }

    async fn configure_guest(
        &self,
        req: Request<pb::ConfigureGuestRequest>,
    ) -> Result<Response<pb::ConfigureGuestResponse>, Status> {
        let r = req.into_inner();
        // Check everything before changing anything.
        let interfaces = r
            .interfaces
            .into_iter()
            .map(interface)
            .collect::<Result<Vec<_>, _>>()?;
        let routes = r
            .routes
            .into_iter()
            .map(route)
            .collect::<Result<Vec<_>, _>>()?;
        for key in r.sysctls.keys() {
            guest::sysctl_path(key).map_err(status::config)?;
        }
        if !r.hostname.is_empty() {
            guest::set_hostname(&r.hostname).map_err(status::config)?;
        }
        if !interfaces.is_empty() || !routes.is_empty() {
            netconf::apply(&interfaces, &routes)
                .await
                .map_err(|e| status::config(e.into()))?;
        }
        if let Some(dns) = r.dns {
            guest::set_dns(&dns.servers, &dns.searches, &dns.options).map_err(status::config)?;
        }
        let mut sysctls: Vec<_> = r.sysctls.into_iter().collect();
        sysctls.sort();
        for (k, v) in sysctls {
            guest::set_sysctl(&k, &v).map_err(status::config)?;
        }
        Ok(Response::new(pb::ConfigureGuestResponse {}))
    }

    async fn restored(
        &self,
        req: Request<pb::RestoredRequest>,
    ) -> Result<Response<pb::RestoredResponse>, Status> {
        let r = req.into_inner();
        let plan =
            restore::check(&r.entropy, r.realtime_ns, &r.boot_id).map_err(status::restore)?;
        let done = restore::restore(&plan).await.map_err(status::restore)?;
        let clock = if r.realtime_ns == 0 {
            "clock kept"
        } else {
            "clock set"
        };
        let boot_id = if r.boot_id.is_empty() {
            "boot ID kept".to_owned()
        } else {
            format!("boot ID {}", r.boot_id)
        };
        crate::console::info(format_args!(
            "restored from a snapshot: CRNG reseeded, {clock}, {} block devices and {} \
             neighbour entries flushed, {boot_id}",
            done.block_devices_flushed, done.neighbours_flushed,
        ));
        Ok(Response::new(pb::RestoredResponse {
            block_devices_flushed: done.block_devices_flushed,
            neighbours_flushed: done.neighbours_flushed,
        }))
    }

    async fn create_container(
        &self,
        req: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let (pid, user) = self
            .manager()?
            .create(spec)
            .await
            .map_err(status::container)?;
        Ok(Response::new(pb::CreateContainerResponse {
            pid: u32::try_from(pid.as_raw()).unwrap_or(0),
            user: Some(pb::User {
                uid: user.uid,
                gid: user.gid,
                additional_gids: user.groups,
                ..Default::default()
            }),
        }))
    }

    async fn start_container(
        &self,
        req: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        self.manager()?
            .start(&req.into_inner().container_id)
            .await
            .map_err(status::container)?;
        Ok(Response::new(pb::StartContainerResponse {}))
    }

    async fn exec_process(
        &self,
        req: Request<pb::ExecProcessRequest>,
    ) -> Result<Response<pb::ExecProcessResponse>, Status> {
        let r = req.into_inner();
        let process = r
            .process
            .ok_or_else(|| Status::invalid_argument("process is required"))?;
        let pid = self
            .manager()?
            .exec(&r.container_id, &r.exec_id, process)
            .await
            .map_err(status::container)?;
        Ok(Response::new(pb::ExecProcessResponse {
            pid: u32::try_from(pid.as_raw()).unwrap_or(0),
        }))
    }

    async fn signal_process(
        &self,
        req: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::SignalProcessResponse>, Status> {
        let r = req.into_inner();
        self.manager()?
            .signal(&r.container_id, &r.exec_id, r.signal)
            .map_err(status::container)?;
        Ok(Response::new(pb::SignalProcessResponse {}))
    }

    async fn wait_process(
        &self,
        req: Request<pb::WaitProcessRequest>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        let budget = wait_budget(&req);
        let r = req.into_inner();
        let m = self.manager()?;
        let p = m
            .get(&r.container_id)
            .and_then(|c| c.process(&r.exec_id))
            .map_err(status::container)?;
        let s = p.wait(budget).await.map_err(status::container)?;
        m.forget_exec(&r.container_id, &r.exec_id);
        Ok(Response::new(pb::WaitProcessResponse {
            status: Some(process_status(&s)),
        }))
    }

    async fn remove_container(
        &self,
        req: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let r = req.into_inner();
        self.manager()?
            .remove(&r.container_id, r.force)
            .await
            .map_err(status::container)?;
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        req: Request<pb::ContainerStatusRequest>,
    ) -> Result<Response<pb::ContainerStatusResponse>, Status> {
        let c = self
            .manager()?
            .get(&req.into_inner().container_id)
            .map_err(status::container)?;
        Ok(Response::new(pb::ContainerStatusResponse {
            status: Some(container_status(&c)),
        }))
    }

    async fn list_containers(
        &self,
        _req: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let containers = self
            .manager()?
            .list()
            .iter()
            .map(|c| container_status(c))
            .collect();
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    async fn write_stdin(
        &self,
        req: Request<pb::WriteStdinRequest>,
    ) -> Result<Response<pb::WriteStdinResponse>, Status> {
        let r = req.into_inner();
        let p = self.process(&r.container_id, &r.exec_id)?;
        let n =
            p.io.write_stdin(&r.data)
                .await
                .map_err(|e| status::container(e.into()))?;
        Ok(Response::new(pb::WriteStdinResponse {
            written: u32::try_from(n).unwrap_or(u32::MAX),
        }))
    }

    async fn close_stdin(
        &self,
        req: Request<pb::CloseStdinRequest>,
    ) -> Result<Response<pb::CloseStdinResponse>, Status> {
        let r = req.into_inner();
        let p = self.process(&r.container_id, &r.exec_id)?;
        p.io.close_stdin()
            .await
            .map_err(|e| status::container(e.into()))?;
        Ok(Response::new(pb::CloseStdinResponse {}))
    }

    async fn read_output(
        &self,
        req: Request<pb::ReadOutputRequest>,
    ) -> Result<Response<pb::ReadOutputResponse>, Status> {
        let budget = wait_budget(&req);
        let r = req.into_inner();
        let stderr = match pb::Stream::try_from(r.stream) {
            Ok(pb::Stream::Stdout) => false,
            Ok(pb::Stream::Stderr) => true,
            _ => return Err(Status::invalid_argument("stream must be STDOUT or STDERR")),
        };
        let chunk = self
            .manager()?
            .read_output(
                &r.container_id,
                &r.exec_id,
                stderr,
                r.offset,
                r.max_bytes as usize,
                budget,
            )
            .await
            .map_err(status::container)?;
        Ok(Response::new(pb::ReadOutputResponse {
            offset: chunk.offset,
            data: chunk.data,
            eof: chunk.eof,
        }))
    }

    async fn resize_tty(
        &self,
        req: Request<pb::ResizeTtyRequest>,
    ) -> Result<Response<pb::ResizeTtyResponse>, Status> {
        let r = req.into_inner();
        let size = r
            .size
            .ok_or_else(|| Status::invalid_argument("size is required"))?;
        let rows = u16::try_from(size.rows).map_err(|_| invalid("rows out of range"))?;
        let cols = u16::try_from(size.cols).map_err(|_| invalid("cols out of range"))?;
        let p = self.process(&r.container_id, &r.exec_id)?;
        p.io.resize(rows, cols)
            .map_err(|e| status::container(e.into()))?;
        Ok(Response::new(pb::ResizeTtyResponse {}))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let ids = req.into_inner().container_ids;
        let m = self.manager()?;
        let containers = if ids.is_empty() {
            m.list()
        } else {
            ids.iter()
                .map(|id| m.get(id))
                .collect::<Result<Vec<_>, _>>()
                .map_err(status::container)?
        };
        let containers = containers
            .iter()
            .map(|c| {
                let (u, (bytes, inodes)) = c.usage();
                pb::ContainerStats {
                    container_id: c.id.clone(),
                    timestamp_ns: unix_ns(Some(SystemTime::now())),
                    cpu_usage_usec: u.cpu_usec,
                    cpu_user_usec: u.cpu_user_usec,
                    cpu_system_usec: u.cpu_system_usec,
                    memory_usage_bytes: u.memory,
                    memory_working_set_bytes: u.working_set,
                    oom_kills: u.oom_kills,
                    pids: u.pids,
                    writable_layer_bytes: bytes,
                    writable_layer_inodes: inodes,
                }
            })
            .collect();
        Ok(Response::new(pb::StatsResponse {
            containers,
            guest: Some(guest_stats()),
        }))
    }

    async fn update_resources(
        &self,
        req: Request<pb::UpdateResourcesRequest>,
    ) -> Result<Response<pb::UpdateResourcesResponse>, Status> {
        let r = req.into_inner();
        let resources = r
            .resources
            .ok_or_else(|| Status::invalid_argument("resources is required"))?;
        self.manager()?
            .update_resources(&r.container_id, resources)
            .map_err(status::container)?;
        Ok(Response::new(pb::UpdateResourcesResponse {}))
    }

    async fn write_file(
        &self,
        req: Request<pb::WriteFileRequest>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        let r = req.into_inner();
        guest::write_shared(std::path::Path::new(&r.path), &r.data, r.mode, r.uid, r.gid)
            .map_err(status::config)?;
        Ok(Response::new(pb::WriteFileResponse {}))
    }

    async fn sync_volume(
        &self,
        req: Request<pb::SyncVolumeRequest>,
    ) -> Result<Response<pb::SyncVolumeResponse>, Status> {
        let r = req.into_inner();
        volumes::sync(&r.name, &r.entries).map_err(status::volume)?;
        Ok(Response::new(pb::SyncVolumeResponse {}))
    }

    async fn prepare_volume(
        &self,
        req: Request<pb::PrepareVolumeRequest>,
    ) -> Result<Response<pb::PrepareVolumeResponse>, Status> {
        use pb::prepare_volume_request::Medium as M;
        let r = req.into_inner();
        match r.medium() {
            M::Disk => {
                let scratch = self
                    .manager()?
                    .scratch_dir(&r.scratch_serial)
                    .map_err(status::container)?;
                volumes::prepare(&r.name, volumes::Medium::Disk(&scratch))
            }
            M::Memory => volumes::prepare(&r.name, volumes::Medium::Memory(r.size_limit_bytes)),
            M::Shared => volumes::prepare(&r.name, volumes::Medium::Shared(&r.fs_tag)),
            M::Image => {
                let m = self.manager()?;
                let source = m.image_volume(&r.image_serial).map_err(status::container)?;
                let prepared =
                    volumes::prepare(&r.name, volumes::Medium::Image(&source, &r.image_serial));
                if prepared.is_err() {
                    m.release_image_volume(&r.image_serial);
                }
                match prepared {
                    // Prepared before: one use of the drive per volume.
                    Err(volumes::VolumeError::Exists(_)) => Ok(()),
                    other => other,
                }
            }
        }
        .map_err(status::volume)?;
        Ok(Response::new(pb::PrepareVolumeResponse {}))
    }

    async fn read_volume(
        &self,
        req: Request<pb::ReadVolumeRequest>,
    ) -> Result<Response<pb::ReadVolumeResponse>, Status> {
        let r = req.into_inner();
        let (data, truncated) = volumes::read_tail(&r.name, r.max_bytes).map_err(status::volume)?;
        Ok(Response::new(pb::ReadVolumeResponse { data, truncated }))
    }

    async fn remove_volume(
        &self,
        req: Request<pb::RemoveVolumeRequest>,
    ) -> Result<Response<pb::RemoveVolumeResponse>, Status> {
        let released = volumes::remove(&req.into_inner().name).map_err(status::volume)?;
        if let (Some(serial), Ok(m)) = (released, self.manager()) {
            m.release_image_volume(&serial);
        }
        Ok(Response::new(pb::RemoveVolumeResponse {}))
    }

    async fn shutdown(
        &self,
        req: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let grace = match req.into_inner().grace_period_seconds {
            0 => DEFAULT_GRACE,
            s => Duration::from_secs(u64::from(s)),
        };
        if let Ok(m) = &self.manager {
            m.stop_all(grace).await;
        }
        tokio::spawn(async {
            // Let the response leave the guest first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            crate::pid1::power_off();
        });
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_parses() {
        assert_eq!(loadavg("0.20 0.18 0.12 1/80 11206\n"), (0.2, 80));
        assert_eq!(loadavg(""), (0.0, 0));
    }
}
