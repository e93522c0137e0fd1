-- Boot modes and image properties (issue 11 item 9, issue 12 item 5).
--
-- images.kernel_id: a disk image booted by an outside kernel names that `kernel` image,
-- as an AMI names its AKI/ARI. Sizes are bytes. Hosts say which boot modes they can honour
-- (`uefi` only where OVMF is installed); rows of agents that never said boot BIOS only.
ALTER TABLE images ADD COLUMN boot_mode TEXT NOT NULL DEFAULT 'bios';
ALTER TABLE images ADD COLUMN kernel_id TEXT;
ALTER TABLE images ADD COLUMN min_disk BIGINT;
ALTER TABLE images ADD COLUMN min_memory BIGINT;
ALTER TABLE images ADD COLUMN os TEXT;
ALTER TABLE instances ADD COLUMN root_disk_size BIGINT;
ALTER TABLE host_nodes ADD COLUMN boot_modes TEXT NOT NULL DEFAULT ',bios,';
