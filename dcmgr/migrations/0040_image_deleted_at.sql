-- An image deleted while instances, volumes being filled or disk images (kernel_id) use
-- it: hidden from every account, its name still held and its row and blob kept for
-- those users (an instance that starts again on another host fetches it), then removed
-- by `app::image::collect_deleted` once nothing uses it (issue 12, lifetime).
ALTER TABLE images ADD COLUMN deleted_at TEXT;
CREATE INDEX images_deleted ON images (deleted_at) WHERE deleted_at IS NOT NULL;
