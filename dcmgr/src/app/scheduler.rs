//! Placement among online hosts that offer the hypervisor kind: `spread` (most free
//! memory, then free CPUs) or `pack` (least), as dcmgr's `placement` says. A host holds its allocatable vCPUs and memory: its capacity times
//! dcmgr's allocation ratios (`Config::allocatable`, stored on the host row). The
//! reservation is one conditional UPDATE against them inside the caller's transaction, so
//! two concurrent creates can never book a host beyond them on either database.
//! The statements are in [`crate::datastore::host`], which also gives reservations back
//! ([`crate::datastore::host::release`]) when an instance leaves its host.

use crate::ctx::Ctx;
use crate::datastore::host as store;
use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::id::HostNodeId;
use vdc_schema::{BootMode, HypervisorKind};

#[derive(Debug, Clone, Copy)]
pub struct Demand {
    pub hypervisor: HypervisorKind,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Needs a host with UEFI firmware (OVMF).
    pub uefi: bool,
}

/// Candidate hosts, best first by the configured placement (read outside the
/// transaction; the UPDATE re-checks).
pub async fn candidates(ctx: &Ctx, d: Demand, prefer: Option<&str>) -> ApiResult<Vec<String>> {
    let boot = d.uefi.then_some(BootMode::Uefi);
    let ids = prefer_first(
        store::candidates(&ctx.db, d.hypervisor, d.cpus, d.memory_mib, boot, ctx.config.placement).await?,
        prefer,
    );
    if ids.is_empty() {
        return Err(no_host(&ctx.db, d).await);
    }
    Ok(ids)
}

/// Moves `prefer` (an instance's last host) to the front if it is a candidate.
pub fn prefer_first(mut ids: Vec<String>, prefer: Option<&str>) -> Vec<String> {
    if let Some(p) = prefer {
        if let Some(pos) = ids.iter().position(|i| i == p) {
            let id = ids.remove(pos);
            ids.insert(0, id);
        }
    }
    ids
}

/// Reserves `d` on the first candidate that still has room. Must be the first write of
/// `tx`, so that on SQLite the transaction takes the write lock before it reads anything.
pub async fn reserve(tx: &mut db::Tx<'_>, d: Demand, candidates: &[String]) -> ApiResult<HostNodeId> {
    for id in candidates {
        if store::try_reserve(tx, id, d.cpus, d.memory_mib).await? {
            return id.parse().map_err(ApiError::internal);
        }
    }
    // Every candidate filled up meanwhile: let the caller's retry look again.
    Err(ApiError::Busy("candidate hosts filled up concurrently".into()))
}

/// Explains why nothing fits.
async fn no_host(pool: &db::Pool, d: Demand) -> ApiError {
    if d.uefi {
        match store::count_bootable(pool, d.hypervisor, BootMode::Uefi).await {
            Ok(0) => return no_uefi(d.hypervisor),
            Ok(_) => {}
            Err(e) => return e.into(),
        }
    }
    match store::free_capacity(pool, d.hypervisor).await {
        Ok((hosts, mem, cpus)) => no_capacity(d, hosts, mem, cpus),
        Err(e) => e.into(),
    }
}

/// The refusal when no host could ever boot a UEFI image: none has OVMF.
pub fn no_uefi(hypervisor: HypervisorKind) -> ApiError {
    ApiError::conflict(
        "boot_mode_unsupported",
        format!(
            "the image boots with UEFI and no online {hypervisor} host has UEFI firmware; \
             install OVMF on a host (apt-get install ovmf) and restart its hva, or use a bios image"
        ),
    )
}

/// The refusal when no host fits `d`, given the online hosts of its hypervisor kind:
/// how many, and the most free memory and vCPUs among them. The figures go to the log
/// and to operators (`vdc host list`), never to the tenant: a cloud's free capacity is
/// not every tenant's business.
pub fn no_capacity(d: Demand, hosts: i64, max_free_mib: Option<i64>, max_free_cpus: Option<i64>) -> ApiError {
    let message = match hosts {
        0 => format!("no online host offers hypervisor {}", d.hypervisor),
        n => {
            tracing::warn!(
                cpus = d.cpus,
                memory_mib = d.memory_mib,
                hypervisor = %d.hypervisor,
                hosts = n,
                max_free_mib,
                max_free_cpus,
                "no host can fit an instance"
            );
            format!(
                "no {} host has room for {} vCPUs and {} MiB now; ask for less, or try again later",
                d.hypervisor, d.cpus, d.memory_mib
            )
        }
    };
    ApiError::Unprocessable { code: "no_capacity", message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_last_host_goes_first_when_it_fits() {
        assert_eq!(prefer_first(ids(&["a", "b", "c"]), Some("c")), ids(&["c", "a", "b"]));
        assert_eq!(prefer_first(ids(&["a", "b"]), Some("z")), ids(&["a", "b"]));
        assert_eq!(prefer_first(ids(&["a", "b"]), None), ids(&["a", "b"]));
        assert!(prefer_first(vec![], Some("a")).is_empty());
    }

    #[test]
    fn no_capacity_says_what_is_missing() {
        let d = Demand { hypervisor: HypervisorKind::Kvm, cpus: 4, memory_mib: 8192, uefi: false };
        let e = no_capacity(d, 0, None, None);
        assert_eq!(e.code(), "no_capacity");
        assert_eq!(e.to_string(), "no online host offers hypervisor kvm");
        let e = no_capacity(d, 2, Some(4096), Some(8));
        assert_eq!(
            e.to_string(),
            "no kvm host has room for 4 vCPUs and 8192 MiB now; ask for less, or try again later"
        );
        assert!(!e.to_string().contains("4096"), "the free capacity is not told");
    }
}
