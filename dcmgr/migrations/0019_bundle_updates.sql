-- Bundle updates (issue 13, point 5): a newer bundle of the same VDC updates the row of
-- the earlier import (its hash and map); `exported_at` is the manifest's, so an older
-- bundle arriving after a newer one is recognised as a downgrade. NULL for imports made
-- before this column: nothing to compare, the next update sets it.
ALTER TABLE bundle_imports ADD COLUMN exported_at TEXT;
ALTER TABLE bundle_imports ADD COLUMN updated_at TEXT;
