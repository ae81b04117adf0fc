//! Pod networking: a persistent network namespace per pod ([`netns`]), the node's CNI
//! configuration run in it ([`cni`]), and the tap that carries the pod's CNI interface
//! into its VM ([`tap`]); [`pod`] puts them together for one pod; [`counters`] reads
//! a pod's traffic.

pub mod cni;
pub mod counters;
pub mod netns;
pub mod pod;
pub mod tap;
