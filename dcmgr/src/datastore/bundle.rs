//! Bundles: the account's model read in one transaction (export), the import record, and
//! the rows an import adds (inside the import's one transaction, with the inserts of
//! `network`, `secgroup`, `instance` and `interface`).

use crate::datastore as db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::BundleImport;
use vdc_schema::id::AccountId;

pub type NetworkRow = (String, String, String, String, String, String);
pub type GroupRow = (String, String, String);
/// (group, direction, protocol, port_min, port_max, cidr, remote group)
pub type RuleRow = (String, String, String, Option<i64>, Option<i64>, Option<String>, Option<String>);
pub type KeyRow = (String, String, String);
/// (id, name, format, arch, hypervisors, boot_mode, kernel_id, min_disk, min_memory, os,
/// default_user, blob, account_id, deleted: 1 for an image deleted but still used)
pub type ImageRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    i64,
);
/// (id, name, image, hypervisor, cpus, memory, key pair, user-data, root disk size, goal,
/// zone, labels, server group)
pub type InstanceRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    String,
    String,
    String,
    Option<String>,
);
/// (id, name, policy)
pub type ServerGroupRow = (String, String, String);
/// (vif id, instance, network, ip, mac)
pub type VifRow = (String, String, String, String, String);
/// (id, name, size, the instance it is attached to)
pub type VolumeRow = (String, String, i64, Option<String>);
/// (id, the instance it is on, its address, the interface it is on)
pub type FipRow = (String, Option<String>, String, Option<String>);

/// The account's model as one consistent snapshot.
pub struct Snapshot {
    pub networks: Vec<NetworkRow>,
    pub groups: Vec<GroupRow>,
    pub rules: Vec<RuleRow>,
    pub keypairs: Vec<KeyRow>,
    /// The account's images and the images its instances boot that it does not own.
    pub images: Vec<ImageRow>,
    pub instances: Vec<InstanceRow>,
    pub vifs: Vec<VifRow>,
    /// (vif, group)
    pub vif_groups: Vec<(String, String)>,
    pub volumes: Vec<VolumeRow>,
    pub floating_ips: Vec<FipRow>,
    pub server_groups: Vec<ServerGroupRow>,
    /// (network, group, volume or image here, the name of an instance being terminated
    /// that still uses it): what a prune defers until that instance is gone.
    pub ending: Vec<(String, String)>,
    /// (id, name) of the instances being terminated: their names and addresses are held
    /// until they are gone.
    pub ending_instances: Vec<(String, String)>,
    /// (instance, network, address) of their interfaces.
    pub ending_vifs: Vec<(String, String, String)>,
    /// (instance, host, vCPUs, MiB of memory, MiB of disk) its host books for it (a
    /// stopped one only its disk, on the host it was last on).
    pub bookings: Vec<(String, Option<String>, i64, i64, i64)>,
}

const IMAGE_COLS: &str = "id, name, format, arch, hypervisors, boot_mode, kernel_id, min_disk, min_memory, os, \
                          default_user, blob, account_id, CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END";

/// Reads everything of `account` in one transaction, so the snapshot is consistent.
pub async fn snapshot(pool: &db::Pool, account: &AccountId) -> Result<Snapshot, sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    let s = snapshot_on(tx.conn().await?, account).await?;
    tx.commit().await?;
    Ok(s)
}

/// The account's model read on `tx` (an update reads it inside its own transaction).
pub async fn snapshot_on(tx: &mut sqlx::AnyConnection, account: &AccountId) -> Result<Snapshot, sqlx::Error> {
    let a = account.as_str();
    let live = "SELECT id FROM instances WHERE account_id = $1 AND state <> 'terminated' AND goal <> 'terminated'";
    let networks = sqlx::query_as(
        "SELECT id, name, cidr, gateway, dhcp_start, dhcp_end FROM networks WHERE account_id = $1 ORDER BY id",
    )
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let groups = sqlx::query_as("SELECT id, name, description FROM security_groups WHERE account_id = $1 ORDER BY id")
        .bind(a)
        .fetch_all(&mut *tx)
        .await?;
    let rules = sqlx::query_as(
        "SELECT r.group_id, r.direction, r.protocol, r.port_min, r.port_max, r.cidr, r.remote_group_id \
         FROM security_group_rules r JOIN security_groups g ON g.id = r.group_id \
         WHERE g.account_id = $1 ORDER BY r.id",
    )
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let keypairs = sqlx::query_as("SELECT id, name, public_key FROM keypairs WHERE account_id = $1 ORDER BY id")
        .bind(a)
        .fetch_all(&mut *tx)
        .await?;
    let images = sqlx::query_as(&format!(
        "SELECT {IMAGE_COLS} FROM images WHERE (account_id = $1 AND state = 'available' AND deleted_at IS NULL) \
         OR id IN (SELECT image_id FROM instances WHERE id IN ({live})) \
         OR id IN (SELECT kernel_id FROM images WHERE account_id = $1) ORDER BY id"
    ))
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let instances = sqlx::query_as(&format!(
        "SELECT id, name, image_id, hypervisor, cpus, memory_mib, ssh_key_id, user_data, root_disk_size, goal, \
         placement_zone, placement_labels, server_group_id FROM instances WHERE id IN ({live}) ORDER BY id"
    ))
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let vifs = sqlx::query_as(&format!(
        "SELECT id, instance_id, network_id, ip, mac FROM vifs WHERE instance_id IN ({live}) ORDER BY instance_id, position"
    ))
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let vif_groups = sqlx::query_as(&format!(
        "SELECT vif_id, group_id FROM vif_security_groups WHERE vif_id IN \
         (SELECT id FROM vifs WHERE instance_id IN ({live})) ORDER BY vif_id, group_id"
    ))
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let volumes = sqlx::query_as(
        "SELECT id, name, size_mib, instance_id FROM volumes WHERE account_id = $1 AND state <> 'deleted' ORDER BY id",
    )
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let floating_ips =
        sqlx::query_as("SELECT id, instance_id, ip, vif_id FROM floating_ips WHERE account_id = $1 ORDER BY id")
            .bind(a)
            .fetch_all(&mut *tx)
            .await?;
    let server_groups = sqlx::query_as("SELECT id, name, policy FROM server_groups WHERE account_id = $1 ORDER BY id")
        .bind(a)
        .fetch_all(&mut *tx)
        .await?;
    let ending_instances = "SELECT id, name FROM instances WHERE account_id = $1 AND state <> 'terminated' \
                            AND goal = 'terminated'";
    let ending = sqlx::query_as(&format!(
        "SELECT v.network_id, e.name FROM vifs v JOIN ({ending_instances}) e ON e.id = v.instance_id \
         UNION ALL SELECT g.group_id, e.name FROM vif_security_groups g JOIN vifs v ON v.id = g.vif_id \
           JOIN ({ending_instances}) e ON e.id = v.instance_id \
         UNION ALL SELECT vo.id, e.name FROM volumes vo JOIN ({ending_instances}) e ON e.id = vo.instance_id \
         UNION ALL SELECT i.image_id, e.name FROM instances i JOIN ({ending_instances}) e ON e.id = i.id"
    ))
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let ending_vifs = sqlx::query_as(&format!(
        "SELECT v.instance_id, v.network_id, v.ip FROM vifs v JOIN ({ending_instances}) e ON e.id = v.instance_id"
    ))
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    let ending_instances = sqlx::query_as(ending_instances).bind(a).fetch_all(&mut *tx).await?;
    let bookings = sqlx::query_as(
        "SELECT id, COALESCE(host_node_id, last_host_id), CASE WHEN host_node_id IS NULL THEN 0 ELSE cpus END, \
         CASE WHEN host_node_id IS NULL THEN 0 ELSE memory_mib END, disk_mib FROM instances \
         WHERE account_id = $1 AND state <> 'terminated'",
    )
    .bind(a)
    .fetch_all(&mut *tx)
    .await?;
    Ok(Snapshot {
        networks,
        groups,
        rules,
        keypairs,
        images,
        instances,
        vifs,
        vif_groups,
        volumes,
        floating_ips,
        server_groups,
        ending,
        ending_instances,
        ending_vifs,
        bookings,
    })
}

/// What a plan is checked against: the account's names and CIDRs, the site's public
/// images and hypervisors, and whether it has an external pool.
pub struct Existing {
    /// (kind, name); `image:deleted` for the name an image deleted but still used holds.
    pub names: Vec<(String, String)>,
    /// (id, cidr)
    pub cidrs: Vec<(String, String)>,
    /// (id, name, hypervisors, shared: 1 for one another account shared with it) of the
    /// available images the account may use: its own, public ones and those shared with
    /// it. A bundle's image that travels without data resolves by name to one of its own
    /// or a public one, or is mapped to any of these.
    pub usable_images: Vec<(String, String, String, i64)>,
    /// Each host: what it runs and has free (a hard group policy and the instances an
    /// import places need room on hosts that run them).
    pub hosts: Vec<HostHere>,
    /// The site has an external network (floating IPs can be allocated); set by the caller
    /// from the configuration.
    pub external: bool,
    /// The external network's CIDR, which no tenant network may overlap; set by the caller.
    pub external_cidr: Option<ipnet::Ipv4Net>,
    /// The earlier import of the same VDC, when this bundle updates it; set by the caller.
    pub prior: Option<Prior>,
}

impl Existing {
    /// The hypervisors the site's hosts run, sorted.
    pub fn hypervisors(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.hosts.iter().flat_map(|h| h.hypervisors.iter().map(String::as_str)).collect();
        all.sort();
        all.dedup();
        all
    }
}

/// A host of the site as a plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHere {
    pub id: String,
    pub hypervisors: Vec<String>,
    pub zone: String,
    /// As `host::join_labels`.
    pub labels: String,
    /// Online and not cordoned: the only hosts placement uses for new instances.
    pub online: bool,
    pub cpus_free: i64,
    pub memory_free_mib: i64,
    /// None: the host reports no disk, and books none.
    pub disk_free_mib: Option<i64>,
}

/// The earlier import of a VDC and the account's model now: what an update is planned against.
pub struct Prior {
    pub import: BundleImport,
    /// The `exported_at` of the bundle it holds (NULL for imports older than updates).
    pub exported_at: Option<String>,
    pub target: Snapshot,
}

/// A host as `existing` reads it: hypervisors, zone, labels, state, schedulable and what is free.
type HostRow = (String, String, String, String, String, i64, i64, i64, Option<i64>);

pub async fn existing(db: &mut sqlx::AnyConnection, account: &AccountId) -> Result<Existing, sqlx::Error> {
    let a = account.as_str();
    let names = sqlx::query_as(
        "SELECT 'network', name FROM networks WHERE account_id = $1 \
         UNION ALL SELECT 'security_group', name FROM security_groups WHERE account_id = $1 \
         UNION ALL SELECT 'keypair', name FROM keypairs WHERE account_id = $1 \
         UNION ALL SELECT CASE WHEN deleted_at IS NULL THEN 'image' ELSE 'image:deleted' END, name \
           FROM images WHERE account_id = $1 \
         UNION ALL SELECT 'instance', name FROM instances WHERE account_id = $1 AND state <> 'terminated' \
         UNION ALL SELECT 'volume', name FROM volumes WHERE account_id = $1 AND state <> 'deleted' \
         UNION ALL SELECT 'server_group', name FROM server_groups WHERE account_id = $1",
    )
    .bind(a)
    .fetch_all(&mut *db)
    .await?;
    let cidrs =
        sqlx::query_as("SELECT id, cidr FROM networks WHERE account_id = $1").bind(a).fetch_all(&mut *db).await?;
    let usable_images = sqlx::query_as(
        "SELECT id, name, hypervisors, CASE WHEN account_id = $1 OR public = 1 THEN 0 ELSE 1 END FROM images \
         WHERE state = 'available' AND deleted_at IS NULL AND (account_id = $1 OR public = 1 \
         OR id IN (SELECT image_id FROM image_members WHERE account_id = $1)) ORDER BY id",
    )
    .bind(a)
    .fetch_all(&mut *db)
    .await?;
    let rows: Vec<HostRow> = sqlx::query_as(
        "SELECT id, hypervisors, zone, labels, state, schedulable, cpus_allocatable - cpus_used, \
         memory_allocatable_mib - memory_used_mib, disk_allocatable_mib - disk_used_mib FROM host_nodes ORDER BY id",
    )
    .fetch_all(&mut *db)
    .await?;
    let hosts: Vec<HostHere> = rows
        .into_iter()
        .map(|(id, hv, zone, labels, state, schedulable, cpus_free, memory_free_mib, disk_free_mib)| HostHere {
            id,
            hypervisors: db::split_list::<String>(&hv),
            zone,
            labels,
            online: state == "online" && schedulable == 1,
            cpus_free,
            memory_free_mib,
            disk_free_mib,
        })
        .collect();
    Ok(Existing { names, cidrs, usable_images, hosts, external: false, external_cidr: None, prior: None })
}

type ImportRow = (String, String, String, String, String, String, Option<String>);

fn import_api(r: ImportRow) -> ApiResult<BundleImport> {
    Ok(BundleImport {
        id: r.0.parse().map_err(ApiError::internal)?,
        source_site: r.1,
        source_vdc: r.2,
        manifest_hash: r.3,
        id_map: serde_json::from_str(&r.4).map_err(ApiError::internal)?,
        created_at: db::parse_time(&r.5),
        updated_at: r.6.as_deref().map(db::parse_time),
    })
}

const IMPORT_COLS: &str = "id, source_site, source_vdc, manifest_hash, id_map, created_at, updated_at";

type PriorRow = (String, String, String, String, String, String, Option<String>, Option<String>);

/// The latest import of (site, VDC) into the account whatever its bundle, with the
/// `exported_at` of that bundle, and the account's model read on the same connection.
pub async fn prior(
    db: &mut sqlx::AnyConnection,
    account: &AccountId,
    site: &str,
    vdc: &str,
) -> ApiResult<Option<Prior>> {
    let row: Option<PriorRow> = sqlx::query_as(&format!(
        "SELECT {IMPORT_COLS}, exported_at FROM bundle_imports \
         WHERE account_id = $1 AND source_site = $2 AND source_vdc = $3 ORDER BY created_at DESC, id DESC LIMIT 1"
    ))
    .bind(account.as_str())
    .bind(site)
    .bind(vdc)
    .fetch_optional(&mut *db)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let import = import_api((r.0, r.1, r.2, r.3, r.4, r.5, r.6))?;
    let mut target = snapshot_on(db, account).await?;
    // The account's deleted images too, used or not yet collected: an update finds the
    // ones its import made (and keeps them, or restores them) rather than making them again
    // under a name they still hold.
    let deleted: Vec<ImageRow> = sqlx::query_as(&format!(
        "SELECT {IMAGE_COLS} FROM images WHERE account_id = $1 AND deleted_at IS NOT NULL ORDER BY id"
    ))
    .bind(account.as_str())
    .fetch_all(&mut *db)
    .await?;
    for r in deleted {
        if !target.images.iter().any(|t| t.0 == r.0) {
            target.images.push(r);
        }
    }
    Ok(Some(Prior { import, exported_at: r.7, target }))
}

/// An update: the import now holds the newer bundle's hash and the updated map.
pub async fn update_import(tx: &mut db::Tx<'_>, i: &BundleImport, exported_at: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE bundle_imports SET manifest_hash = $1, id_map = $2, exported_at = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(&i.manifest_hash)
    .bind(serde_json::to_string(&i.id_map).expect("a map of strings"))
    .bind(exported_at)
    .bind(i.updated_at.as_ref().map(db::time))
    .bind(i.id.as_str())
    .execute(tx.conn().await?)
    .await?;
    Ok(())
}

pub async fn find_import(
    db: &mut sqlx::AnyConnection,
    account: &AccountId,
    site: &str,
    vdc: &str,
    hash: &str,
) -> ApiResult<Option<BundleImport>> {
    let row: Option<ImportRow> = sqlx::query_as(&format!(
        "SELECT {IMPORT_COLS} FROM bundle_imports WHERE account_id = $1 AND source_site = $2 AND source_vdc = $3 \
         AND manifest_hash = $4"
    ))
    .bind(account.as_str())
    .bind(site)
    .bind(vdc)
    .bind(hash)
    .fetch_optional(&mut *db)
    .await?;
    row.map(import_api).transpose()
}

pub async fn insert_import(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    i: &BundleImport,
    exported_at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO bundle_imports ({IMPORT_COLS}, account_id, exported_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
        .bind(i.id.as_str())
        .bind(&i.source_site)
        .bind(&i.source_vdc)
        .bind(&i.manifest_hash)
        .bind(serde_json::to_string(&i.id_map).expect("a map of strings"))
        .bind(db::time(&i.created_at))
        .bind(i.updated_at.as_ref().map(db::time))
        .bind(account.as_str())
        .bind(exported_at)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

pub async fn list_imports(pool: &db::Pool, account: &AccountId) -> ApiResult<Vec<BundleImport>> {
    let rows: Vec<ImportRow> =
        sqlx::query_as(&format!("SELECT {IMPORT_COLS} FROM bundle_imports WHERE account_id = $1 ORDER BY id"))
            .bind(account.as_str())
            .fetch_all(pool)
            .await?;
    rows.into_iter().map(import_api).collect()
}

pub async fn get_import(pool: &db::Pool, account: &AccountId, id: &str) -> ApiResult<Option<BundleImport>> {
    let row: Option<ImportRow> =
        sqlx::query_as(&format!("SELECT {IMPORT_COLS} FROM bundle_imports WHERE account_id = $1 AND id = $2"))
            .bind(account.as_str())
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(import_api).transpose()
}

pub async fn insert_keypair(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    id: &str,
    name: &str,
    public_key: &str,
    fingerprint: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO keypairs (id, account_id, name, public_key, fingerprint, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(account.as_str())
    .bind(name)
    .bind(public_key)
    .bind(fingerprint)
    .bind(db::now())
    .execute(tx.conn().await?)
    .await?;
    db::event::record(tx.conn().await?, db::event::Kind::KeyPair, id, db::event::Change::Created).await
}

/// An imported image: its data is already in the blob store.
pub async fn insert_image(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    image: &vdc_schema::api::Image,
    blob: &str,
) -> Result<(), sqlx::Error> {
    db::image::insert(tx.conn().await?, account, image).await?;
    sqlx::query("UPDATE images SET blob = $1 WHERE id = $2")
        .bind(blob)
        .bind(image.id.as_str())
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// Whether a MAC address is taken anywhere on this site (MACs are unique site-wide).
pub async fn mac_taken(tx: &mut db::Tx<'_>, mac: &str) -> Result<bool, sqlx::Error> {
    let n: (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM vifs WHERE mac = $1").bind(mac).fetch_one(tx.conn().await?).await?;
    Ok(n.0 > 0)
}

/// A floating IP of `account`, on `vif` of `instance` when given. The unique key on `ip`
/// fails the import if the address was taken meanwhile (and the retry picks another).
pub async fn insert_floating_ip(
    tx: &mut db::Tx<'_>,
    id: &str,
    account: &AccountId,
    ip: &str,
    on: Option<(&str, &str)>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO floating_ips (id, account_id, ip, instance_id, vif_id, network_id, host_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $6)",
    )
    .bind(id)
    .bind(account.as_str())
    .bind(ip)
    .bind(on.map(|o| o.0))
    .bind(on.map(|o| o.1))
    .bind(db::now())
    .execute(tx.conn().await?)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- an update's in-place changes

pub async fn set_dhcp(tx: &mut db::Tx<'_>, network: &str, start: &str, end: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE networks SET dhcp_start = $1, dhcp_end = $2 WHERE id = $3")
        .bind(start)
        .bind(end)
        .bind(network)
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::Network, network, db::event::Change::State).await
}

/// Renames an object an update removes (`--prune`) out of the way of the object of the
/// bundle that takes its name (the source deleted it and made another of the same
/// name): `pruned-ID`, unique as its ID, until it is gone.
pub async fn set_aside(tx: &mut db::Tx<'_>, kind: &str, id: &str) -> Result<(), sqlx::Error> {
    let (table, event) = match kind {
        "network" => ("networks", db::event::Kind::Network),
        "security_group" => ("security_groups", db::event::Kind::SecurityGroup),
        "keypair" => ("keypairs", db::event::Kind::KeyPair),
        "server_group" => ("server_groups", db::event::Kind::ServerGroup),
        "volume" => ("volumes", db::event::Kind::Volume),
        _ => return Ok(()),
    };
    sqlx::query(&format!("UPDATE {table} SET name = $1 WHERE id = $2"))
        .bind(format!("pruned-{id}"))
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, event, id, db::event::Change::State).await
}

/// Sets a group's description (an update; its rules are changed one by one).
pub async fn set_group_description(tx: &mut db::Tx<'_>, group: &str, description: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE security_groups SET description = $1 WHERE id = $2")
        .bind(description)
        .bind(group)
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::SecurityGroup, group, db::event::Change::State).await
}

/// Sets a group's description and removes all its rules (a pruned group, before it goes).
pub async fn clear_group(tx: &mut db::Tx<'_>, group: &str, description: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM security_group_rules WHERE group_id = $1").bind(group).execute(tx.conn().await?).await?;
    set_group_description(tx, group, description).await
}

pub async fn set_public_key(tx: &mut db::Tx<'_>, id: &str, key: &str, fingerprint: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE keypairs SET public_key = $1, fingerprint = $2 WHERE id = $3")
        .bind(key)
        .bind(fingerprint)
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::KeyPair, id, db::event::Change::State).await
}

/// Sets the groups of an interface; the caller bumps it. Returns the groups it joined or
/// left (their members changed).
pub async fn set_vif_groups(tx: &mut db::Tx<'_>, vif: &str, groups: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let old = db::interface::group_ids(tx.conn().await?, vif).await?;
    sqlx::query("DELETE FROM vif_security_groups WHERE vif_id = $1").bind(vif).execute(tx.conn().await?).await?;
    for g in groups {
        db::interface::add_group(tx, vif, g, false).await?;
    }
    let old: std::collections::BTreeSet<String> = old.into_iter().collect();
    let new: std::collections::BTreeSet<String> = groups.iter().cloned().collect();
    Ok(old.symmetric_difference(&new).cloned().collect())
}

pub async fn delete_keypair(tx: &mut db::Tx<'_>, id: &str) -> Result<(), sqlx::Error> {
    db::event::record(tx.conn().await?, db::event::Kind::KeyPair, id, db::event::Change::Deleted).await?;
    sqlx::query("DELETE FROM keypairs WHERE id = $1").bind(id).execute(tx.conn().await?).await?;
    Ok(())
}

/// One chunk an account holds: where it is in the blob store.
#[derive(Debug, Clone)]
pub struct HeldChunk {
    pub sha256: String,
    pub blob: String,
    pub offset: u64,
    pub size: u64,
}

/// The account's chunks among `hashes` (issue 13, point 6). Only this account's rows:
/// another account's data is never "held" for it.
pub async fn held_chunks(
    pool: &db::Pool,
    account: &AccountId,
    hashes: &[String],
) -> Result<Vec<HeldChunk>, sqlx::Error> {
    let mut out = Vec::new();
    for part in hashes.chunks(500) {
        let marks: Vec<String> = (0..part.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT sha256, blob, blob_offset, size FROM bundle_chunks WHERE account_id = $1 AND sha256 IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query_as::<_, (String, String, i64, i64)>(&sql).bind(account.as_str());
        for h in part {
            q = q.bind(h);
        }
        for r in q.fetch_all(pool).await? {
            out.push(HeldChunk { sha256: r.0, blob: r.1, offset: r.2 as u64, size: r.3 as u64 });
        }
    }
    Ok(out)
}

/// Records that the account holds `chunks` (in their blobs); a later import of the same
/// chunk points it at the newer blob.
pub async fn record_chunks(pool: &db::Pool, account: &AccountId, chunks: &[HeldChunk]) -> Result<(), sqlx::Error> {
    for part in chunks.chunks(200) {
        let mut tx = db::begin(pool).await?;
        for c in part {
            sqlx::query(
                "INSERT INTO bundle_chunks (account_id, sha256, blob, blob_offset, size) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (account_id, sha256) DO UPDATE SET blob = excluded.blob, \
                 blob_offset = excluded.blob_offset, size = excluded.size",
            )
            .bind(account.as_str())
            .bind(&c.sha256)
            .bind(&c.blob)
            .bind(c.offset as i64)
            .bind(c.size as i64)
            .execute(tx.conn().await?)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- export runs

/// Records a bundle export's run (migration 0029).
pub async fn start_export_run(pool: &db::Pool, id: &str, account: &AccountId) -> Result<(), sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    sqlx::query("INSERT INTO export_runs (id, account_id, started_at) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(account.as_str())
        .bind(db::now())
        .execute(tx.conn().await?)
        .await?;
    tx.commit().await
}

/// Records something the run is about to make (`image`, `snapshot`: its name) or stop
/// (`restart`: the instance's ID).
pub async fn add_export_temporary(pool: &db::Pool, run: &str, kind: &str, name: &str) -> Result<(), sqlx::Error> {
    on_export_temporary(
        pool,
        "INSERT INTO export_temporaries (export_id, kind, name) VALUES ($1, $2, $3)",
        run,
        kind,
        name,
    )
    .await
}

/// Whether `name` is a temporary `kind` (`image`, `snapshot`) of an export of `account`
/// under way: those are not counted against the account's quotas ([`super::quota::usage`]
/// leaves them out the same way). Names are recorded before the objects are made, and
/// only by the export.
pub async fn is_export_temporary(
    conn: &mut db::Conn,
    account: &str,
    kind: &str,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM export_temporaries t JOIN export_runs r ON r.id = t.export_id
         WHERE r.account_id = $1 AND t.kind = $2 AND t.name = $3",
    )
    .bind(account)
    .bind(kind)
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

pub async fn remove_export_temporary(pool: &db::Pool, run: &str, kind: &str, name: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM export_temporaries WHERE export_id = $1 AND kind = $2 AND name = $3";
    on_export_temporary(pool, sql, run, kind, name).await
}

async fn on_export_temporary(
    pool: &db::Pool,
    sql: &'static str,
    run: &str,
    kind: &str,
    name: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    sqlx::query(sql).bind(run).bind(kind).bind(name).execute(tx.conn().await?).await?;
    tx.commit().await
}

/// Every recorded run: (ID, account).
pub async fn export_runs(pool: &db::Pool) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, account_id FROM export_runs ORDER BY id").fetch_all(pool).await
}

/// What run `run` recorded: (kind, name).
pub async fn export_temporaries(pool: &db::Pool, run: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT kind, name FROM export_temporaries WHERE export_id = $1 ORDER BY kind, name")
        .bind(run)
        .fetch_all(pool)
        .await
}

/// The ID of the account's image or (not deleted) snapshot named `name`.
pub async fn export_temporary_id(
    pool: &db::Pool,
    kind: &str,
    account: &str,
    name: &str,
) -> Result<Option<String>, sqlx::Error> {
    let sql = match kind {
        "image" => "SELECT id FROM images WHERE account_id = $1 AND name = $2",
        _ => "SELECT id FROM snapshots WHERE account_id = $1 AND name = $2 AND state <> 'deleted'",
    };
    let row: Option<(String,)> = sqlx::query_as(sql).bind(account).bind(name).fetch_optional(pool).await?;
    Ok(row.map(|r| r.0))
}

/// Forgets run `run` and its records.
pub async fn end_export_run(pool: &db::Pool, run: &str) -> Result<(), sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    sqlx::query("DELETE FROM export_temporaries WHERE export_id = $1").bind(run).execute(tx.conn().await?).await?;
    sqlx::query("DELETE FROM export_runs WHERE id = $1").bind(run).execute(tx.conn().await?).await?;
    tx.commit().await
}
