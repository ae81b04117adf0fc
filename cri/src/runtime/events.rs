//! `GetContainerEvents`: backend events as a CRI stream.

use std::pin::Pin;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::backend::{ContainerEvent, EventKind, RuntimeBackend};
use super::{container_status, sandbox_status};
use crate::proto;

/// The stream type of `GetContainerEvents`.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<proto::ContainerEventResponse, Status>> + Send>>;

fn kind(k: EventKind) -> proto::ContainerEventType {
    match k {
        EventKind::Created => proto::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => proto::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => proto::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => proto::ContainerEventType::ContainerDeletedEvent,
    }
}

fn response<B: RuntimeBackend>(backend: &B, e: ContainerEvent) -> proto::ContainerEventResponse {
    let pod = backend
        .pod(&e.pod_id)
        .ok()
        .map(|p| sandbox_status::status(p, false).0);
    let containers = backend
        .containers()
        .into_iter()
        .filter(|c| c.pod_id == e.pod_id)
        .map(container_status::status)
        .collect();
    proto::ContainerEventResponse {
        container_id: e.container_id,
        container_event_type: kind(e.kind) as i32,
        created_at: e.at_ns,
        pod_sandbox_status: pod,
        containers_statuses: containers,
    }
}

/// Streams the backend's events until the client goes away. A client too slow to keep
/// up loses events (told by a log line), as with containerd.
pub fn stream<B: RuntimeBackend>(backend: std::sync::Arc<B>) -> EventStream {
    let mut events = backend.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if tx.send(Ok(response(&*backend, e))).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("container events: a slow client missed {n} events");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
