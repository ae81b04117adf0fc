//! RuntimeClass handlers (`[runtimes.NAME]`): the kernel, initramfs, kernel arguments,
//! default size and warm pool a pod's VM gets, by RunPodSandbox's `runtime_handler`.
//! The default handler ("") is the top-level configuration.

use std::path::Path;

use super::error::RuntimeError;
use super::state::Settings;

/// One handler, with every key resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handler<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub kernel_args: &'a str,
    /// vCPUs and MiB of a pod that sets no limits.
    pub size: (u32, u64),
    /// Pre-booted VMs of that size.
    pub warm_pool: u32,
    /// Whether its pods start from templates.
    pub templates: bool,
}

impl Settings {
    /// Handler `name`; an unknown one is refused, naming those there are.
    pub(super) fn handler(&self, name: &str) -> Result<Handler<'_>, RuntimeError> {
        let default = Handler {
            kernel: &self.kernel,
            initramfs: &self.initramfs,
            kernel_args: &self.vm.kernel_args,
            size: (self.vm.vcpus, self.vm.mem_mib),
            warm_pool: self.vm.warm_pool,
            templates: self.vm.templates,
        };
        if name.is_empty() {
            return Ok(default);
        }
        let Some(r) = self.runtimes.get(name) else {
            let known: Vec<String> = self
                .handler_names()
                .iter()
                .map(|n| format!("{n:?}"))
                .collect();
            return Err(RuntimeError::Invalid(format!(
                "no runtime handler {name:?} is configured (a RuntimeClass's handler must be \
                 one of {}: add [runtimes.{name}] to vmletd's configuration)",
                known.join(", ")
            )));
        };
        Ok(Handler {
            kernel: r.kernel.as_deref().unwrap_or(default.kernel),
            initramfs: r.initramfs.as_deref().unwrap_or(default.initramfs),
            kernel_args: r.kernel_args.as_deref().unwrap_or(default.kernel_args),
            size: (
                r.vcpus.unwrap_or(default.size.0),
                r.mem_mib.unwrap_or(default.size.1),
            ),
            warm_pool: r.warm_pool,
            templates: r.templates.unwrap_or(default.templates),
        })
    }

    /// Every handler's name, the default ("") first.
    pub(super) fn handler_names(&self) -> Vec<String> {
        std::iter::once(String::new())
            .chain(self.runtimes.keys().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuntimeClassConfig;

    #[test]
    fn a_handler_overrides_the_defaults_it_names() {
        let mut s = super::super::tests::settings(Path::new("/d"), 1);
        s.runtimes.insert(
            "big".into(),
            RuntimeClassConfig {
                vcpus: Some(2),
                kernel: Some("/k2".into()),
                ..Default::default()
            },
        );
        let d = s.handler("").unwrap();
        assert_eq!(
            (d.kernel, d.size, d.warm_pool),
            (Path::new("/d/vmlinux"), (1, 256), 1)
        );
        let big = s.handler("big").unwrap();
        assert_eq!(big.kernel, Path::new("/k2"));
        assert_eq!(big.initramfs, Path::new("/d/initramfs"));
        assert_eq!(
            (big.size, big.warm_pool, big.kernel_args),
            ((2, 256), 0, "quiet")
        );
        let e = s.handler("gvisor").unwrap_err();
        assert!(
            e.to_string().contains("no runtime handler \"gvisor\"")
                && e.to_string().contains("one of \"\", \"big\""),
            "{e}"
        );
        assert_eq!(s.handler_names(), ["", "big"]);
    }
}
