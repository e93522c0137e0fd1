-- Disk becomes a resource of the scheduler (as Nova's DISK_GB): a QEMU root disk of
-- 2 TiB virtual size was placed on a host with 45 GB free, because hosts reported
-- vCPUs and memory only. hva now reports the MiB it can hold for root disks (NULL from
-- an older hva: nothing is booked against it), and each instance books its disk
-- image's full size on the host that keeps its disk, running or stopped, until it is
-- terminated or its host is evacuated.
ALTER TABLE host_nodes ADD COLUMN disk_mib BIGINT;
ALTER TABLE host_nodes ADD COLUMN disk_allocatable_mib BIGINT;
ALTER TABLE host_nodes ADD COLUMN disk_used_mib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN disk_mib BIGINT NOT NULL DEFAULT 0;
-- What the instances made before book: their root disk's size, or their image's.
UPDATE instances SET disk_mib = (
    SELECT (COALESCE(instances.root_disk_size, images.virtual_size, 0) + 1048575) / 1048576
    FROM images WHERE images.id = instances.image_id
) WHERE state <> 'terminated' AND hypervisor <> 'lxc'
  AND EXISTS (SELECT 1 FROM images WHERE images.id = instances.image_id);
UPDATE host_nodes SET disk_used_mib = (
    SELECT COALESCE(SUM(i.disk_mib), 0) FROM instances i
    WHERE i.state <> 'terminated'
      AND (i.host_node_id = host_nodes.id OR (i.host_node_id IS NULL AND i.last_host_id = host_nodes.id))
);
