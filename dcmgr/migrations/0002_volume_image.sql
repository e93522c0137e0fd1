-- Volumes filled from an image (sta copies it in with qemu-img).
ALTER TABLE volumes ADD COLUMN image_id TEXT;
