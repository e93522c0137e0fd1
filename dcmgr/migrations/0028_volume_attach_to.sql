-- The instance a volume is to be attached to once it is available: set by a bundle
-- import for a volume it creates (attached as soon as its data is in) or moves between
-- instances (attached once detached), and cleared when the attach is tried. Kept in
-- the database so that a dcmgr restarted meanwhile still does it.
ALTER TABLE volumes ADD COLUMN attach_to TEXT;
-- The reconciler looks for asks left over on every pass.
CREATE INDEX volumes_attach_to ON volumes (id) WHERE attach_to IS NOT NULL;
