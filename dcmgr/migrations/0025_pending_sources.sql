-- A running instance's dispatch looks for its pending capture (`capture:<instance>`), and
-- the reconciler joins pending images to their instances: both by source, among the few
-- pending images.
CREATE INDEX images_pending_source ON images (source) WHERE state = 'pending';
